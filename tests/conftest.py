"""Shared fixtures: a moto S3 server on loopback, both object stores, small episodes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from wamfleet.fleet_agent.episode_io import EpisodeWriter
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec, Outcome
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.storage import LocalObjectStore, ObjectStore, S3ObjectStore


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


def make_s3_store(endpoint: str, bucket: str | None = None, **kwargs: object) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint,
        "test-access",
        "test-secret",
        bucket or f"test-{uuid.uuid4().hex[:12]}",
        region="us-east-1",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects", url_base="http://127.0.0.1:1/objects")
    return make_s3_store(request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def embodiment() -> EmbodimentSpec:
    return EmbodimentSpec(
        name="test-arm",
        cameras=[
            CameraSpec(name="front", height=32, width=48),
            CameraSpec(name="wrist", height=32, width=32),
        ],
        fps=15,
        state_names=["j0", "j1", "j2"],
        action_names=["a0", "a1"],
    )


def frame_images(spec: EmbodimentSpec, index: int) -> dict[str, np.ndarray]:
    """Smooth, index-dependent images: distinct per frame, friendly to a lossy codec."""
    images = {}
    for k, cam in enumerate(spec.cameras):
        yy, xx = np.mgrid[0 : cam.height, 0 : cam.width]
        phase = index * 0.3 + k
        base = 128 + 90 * np.sin(xx / 7.0 + phase) * np.cos(yy / 9.0 - phase / 2)
        img = np.stack([base, 255 - base, np.full_like(base, 60 + 5 * (index % 20))], axis=-1)
        images[cam.name] = img.round().astype(np.uint8)
    return images


WriteEpisode = Callable[..., tuple[Path, EpisodeManifest]]


@pytest.fixture
def write_episode(tmp_path: Path, embodiment: EmbodimentSpec) -> WriteEpisode:
    """Writes a small synthetic episode; returns its directory and manifest."""

    def write(
        frames: int = 20,
        *,
        spec: EmbodimentSpec | None = None,
        video_only: bool = False,
        robot_id: str = "robot-1",
        task: str = "stack the blocks",
        directory: Path | None = None,
        **writer_kwargs: object,
    ) -> tuple[Path, EpisodeManifest]:
        spec = spec or embodiment
        directory = directory or tmp_path / "bundles" / uuid.uuid4().hex
        with EpisodeWriter(
            directory,
            robot_id=robot_id,
            embodiment=spec,
            task=task,
            video_only=video_only,
            **writer_kwargs,  # type: ignore[arg-type]
        ) as writer:
            for i in range(frames):
                state = np.arange(spec.state_dim, dtype=np.float32) + i * 0.5
                action = (
                    None if video_only else np.linspace(-1, 1, spec.action_dim, dtype=np.float32) * (i + 1)
                )
                writer.add_frame(
                    frame_images(spec, i), state, action, reward=float(i), success=i == frames - 1
                )
            manifest = writer.close(Outcome(success=True, progress=1.0))
        return directory, manifest

    return write


# Catalog and platform ------------------------------------------------------------------

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server for this session, dropped at the end."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            name = f"wamfleet_test_{uuid.uuid4().hex[:10]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL server reachable at 127.0.0.1:5432 ({type(exc).__name__})")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The catalog on SQLite, and on PostgreSQL whenever a server is reachable."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    base: str = request.getfixturevalue("pg_url")
    # Each test gets its own schema-free database state: drop every table after it.
    yield base
    from sqlalchemy import create_engine, text

    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


ADMIN_TOKEN = "admin-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
