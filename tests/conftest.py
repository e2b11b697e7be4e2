"""Shared fixtures: a moto S3 server on loopback, both object stores, both catalogs, small episodes."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from tests.support.embodiments import small_arm
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.platform.contracts import EmbodimentSpec, Outcome
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.storage import LocalObjectStore, ObjectStore, S3ObjectStore

# The longest modules, longest first (--durations on 2 cores). scripts/test.sh runs the suite on
# two xdist workers, a module at a time (--dist loadfile), handing out modules in collection order:
# started first, the demo's five minutes run beside everything else instead of after it.
LONGEST_FIRST = (
    "tests/e2e/test_demo.py",
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_rollout.py",
    "tests/integration/test_finetune_ray.py",
    "tests/integration/test_wam_overfit.py",
    "tests/e2e/test_rollout_crash.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other module keeps its place and its tests' order


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
    return small_arm("test-arm")


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

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"


def postgres_listening(host: str = PG_HOST, port: int = PG_PORT, timeout_s: float = 2.0) -> bool:
    """Whether anything accepts a TCP connection on the PostgreSQL port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """`CI=true` (or 1, yes): a run where a missing PostgreSQL must not pass as a skip."""
    return environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@dataclass(frozen=True)
class PostgresVerdict:
    action: Literal["use", "skip", "fail"]
    reason: str = ""


def postgres_verdict(listening: bool, error: BaseException | None, ci: bool) -> PostgresVerdict:
    """What the PostgreSQL fixture does. Only a server that is not there at all is a skip, and
    not even that under CI=true; a server that listens but cannot be used (bad credentials, no
    right to create a database, a missing driver) is an error, never a quiet skip."""
    where = f"{PG_HOST}:{PG_PORT}"
    if not listening:
        reason = f"no PostgreSQL server listens on {where}"
        if ci:
            return PostgresVerdict(
                "fail", f"{reason}; CI=true requires one (the PostgreSQL catalog tests cannot run)"
            )
        return PostgresVerdict("skip", reason)
    if error is not None:
        return PostgresVerdict(
            "fail", f"PostgreSQL listens on {where} but cannot be used: {type(error).__name__}: {error}"
        )
    return PostgresVerdict("use")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server for this session, dropped at the end."""
    from sqlalchemy import create_engine, text

    name = f"wamfleet_test_{uuid.uuid4().hex[:10]}"
    listening = postgres_listening()
    error: BaseException | None = None
    admin = None
    if listening:
        try:
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001 - judged by postgres_verdict, reported in full
            error = exc
            if admin is not None:
                admin.dispose()
    verdict = postgres_verdict(listening, error, in_ci())
    if verdict.action == "skip":
        pytest.skip(verdict.reason)
    if verdict.action == "fail":
        pytest.fail(verdict.reason, pytrace=False)
    assert admin is not None
    yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def catalog_on(kind: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    """A catalog URL: a SQLite file in `directory`, or the session's PostgreSQL database, every
    table of which is dropped on the way out (so each test starts from an empty schema)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'catalog.db'}"
        return
    assert kind == "postgresql", kind
    from sqlalchemy import create_engine, text

    base: str = request.getfixturevalue("pg_url")
    try:
        yield base
    finally:
        engine = create_engine(base)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The catalog on SQLite, and on PostgreSQL (skipped only when no server listens)."""
    with catalog_on(request.param, request, tmp_path) as url:
        yield url


# MLflow ------------------------------------------------------------------------------------------

MakeMlflowStore = Callable[[Path], str]


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with every table, made once per session: creating one runs
    MLflow's migrations (seconds); copying the file costs milliseconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-empty") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return path


@pytest.fixture(scope="session")
def mlflow_store(empty_mlflow_store: Path) -> MakeMlflowStore:
    """`make(path)`: a fresh copy of the empty store at `path` (its parents made); its `sqlite:///`
    URI (the resolved path). Session-scoped, so module- and function-scoped fixtures can both use it."""

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_mlflow_store, path)
        return f"sqlite:///{path.resolve()}"

    return make


ADMIN_TOKEN = "admin-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
