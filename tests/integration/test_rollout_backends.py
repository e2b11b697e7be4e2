"""Local serving backend: real `wamfleet serve` processes reaching a real MLflow registry.

One real server start (a tiny policy registered as version 1 of `wamfleet-policy` in a SQLite
MLflow store) covers start, the openpi websocket, idempotent `ensure`, adoption by a restarted
platform and `stop`. The failure paths run against small stand-in programs given as `command`
(a stdlib HTTP server answering the ready route, one that exits, one that never answers), so
they cost milliseconds. Every process a test starts is killed at teardown, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sqlalchemy import select

from tests.conftest import MakeMlflowStore
from tests.unit.serving.policy_support import tiny_policy
from wamfleet.fleet_agent.policy_client import WebsocketPolicyClient
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import now
from wamfleet.platform.catalog.tables import AuditEntry, PolicyEndpoint
from wamfleet.platform.rollouts.backends.base import ServingError
from wamfleet.platform.rollouts.backends.local import LocalHandle, LocalServingBackend, process_alive
from wamfleet.platform.settings import Settings

MODEL = "wamfleet-policy"

# Stands in for `wamfleet serve`: answers the ready route on --port, like the real server once loaded.
FAKE_SERVER = """
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/models/wam/ready" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Ready).serve_forever()
"""
EXITS = "import sys; print('RESOURCE_DOES_NOT_EXIST: model version 9'); sys.exit(3)"
NEVER_READY = "import time; time.sleep(600)"

MakeBackend = Callable[..., LocalServingBackend]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        registered_model=MODEL,
    )


@pytest.fixture
def make_backend(settings: Settings) -> Iterator[MakeBackend]:
    """Backends over one catalog (a second one is a restarted platform); nothing outlives the test."""
    catalog = Catalog(settings.effective_catalog_url)
    made: list[LocalServingBackend] = []

    def make(**kwargs: Any) -> LocalServingBackend:
        backend = LocalServingBackend(settings, catalog, **kwargs)
        made.append(backend)
        return backend

    yield make
    pids = {child.pid for backend in made for child in backend._children.values()}
    with catalog.session() as s:
        for row in s.scalars(select(PolicyEndpoint)):
            handle = LocalHandle.parse(row.handle)
            pids |= {handle.pid} if handle is not None else set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for backend in made:
        for child in backend._children.values():
            child.wait(timeout=10)
        backend.close()
    catalog.dispose()


def record(catalog: Catalog, version: str) -> PolicyEndpoint | None:
    with catalog.session() as s:
        return s.get(PolicyEndpoint, (version, MODEL))


def audit_actions(catalog: Catalog) -> list[str]:
    with catalog.session() as s:
        return [e.action for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]


def pid_of(row: PolicyEndpoint | None) -> int:
    assert row is not None
    handle = LocalHandle.parse(row.handle)
    assert handle is not None
    return handle.pid


@pytest.fixture
def registered_policy(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store: MakeMlflowStore
) -> str:
    """A tiny policy as version 1 of the registered model, in this test's own SQLite MLflow (a copy
    of the migrated empty store, made only here: the failure paths never reach MLflow)."""
    uri = settings.effective_mlflow_uri
    assert mlflow_store(tmp_path / "mlflow.db") == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # log_policy reaches it through the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server inherits it: 2 shared cores here
    artifacts = (tmp_path / "artifacts").as_uri()  # not ./mlruns in the working directory
    experiment = MlflowClient(uri).create_experiment("policies", artifact_location=artifacts)
    from wamfleet.serving.mlflow_model import log_policy

    with mlflow.start_run(experiment_id=experiment):
        info = log_policy(tiny_policy(tmp_path / "policy"), registered_model_name=MODEL)
    assert str(info.registered_model_version) == "1"
    return "1"


@pytest.mark.slow
def test_serves_a_registered_version_and_survives_a_platform_restart(
    registered_policy: str, make_backend: MakeBackend, settings: Settings
) -> None:
    platform = make_backend()
    endpoint = platform.ensure(registered_policy)
    assert endpoint.version == "1" and endpoint.url.startswith("ws://127.0.0.1:")
    row = record(platform.catalog, "1")
    assert row is not None and row.backend == "local" and row.url == endpoint.url
    pid = pid_of(row)
    assert platform.healthy("1") and platform.endpoints() == {"1": endpoint}
    assert (settings.data_dir / "serving" / "1.log").exists()

    with WebsocketPolicyClient(endpoint.url, timeout_s=60) as robot:
        assert robot.metadata().policy_version == f"{MODEL}/1"
        rng = np.random.default_rng(0)
        chunk = robot.infer(
            "sim-1/episode-0",
            "reach the goal",
            rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8),
            rng.normal(size=39).astype(np.float32),
        )
        assert chunk.actions.shape == (8, 4) and chunk.policy_version == f"{MODEL}/1"

    assert platform.ensure("1") == endpoint  # idempotent: the same server
    assert pid_of(record(platform.catalog, "1")) == pid

    restarted = make_backend()  # a new platform process over the same catalog
    assert restarted.endpoints() == {"1": endpoint}
    assert restarted.healthy("1")
    assert restarted.ensure("1") == endpoint  # adopted, not started again
    assert pid_of(record(platform.catalog, "1")) == pid
    assert audit_actions(platform.catalog).count("endpoint.start") == 1

    restarted.stop("1")
    assert not process_alive(pid)
    assert record(platform.catalog, "1") is None and restarted.endpoints() == {}
    assert not platform.healthy("1") and not restarted.healthy("1")
    assert audit_actions(platform.catalog)[-1] == "endpoint.stop"
    restarted.stop("1")  # nothing left to stop: a no-op


def test_a_server_that_exits_is_reported_with_its_log(make_backend: MakeBackend) -> None:
    backend = make_backend(command=[sys.executable, "-c", EXITS])
    with pytest.raises(ServingError, match="exited with code 3") as failure:
        backend.ensure("9")
    assert "RESOURCE_DOES_NOT_EXIST" in str(failure.value)
    assert record(backend.catalog, "9") is None and backend.endpoints() == {}
    assert audit_actions(backend.catalog) == ["endpoint.start", "endpoint.failed"]


def test_a_server_that_never_gets_ready_is_stopped(make_backend: MakeBackend) -> None:
    backend = make_backend(command=[sys.executable, "-c", NEVER_READY], ready_timeout_s=2.0)
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(backend.ensure, "4")
        while record(backend.catalog, "4") is None and not starting.done():
            time.sleep(0.02)
        # Recorded (a restarted platform would find the process) but not handed to robots yet.
        assert record(backend.catalog, "4") is not None and backend.endpoints() == {}
        with pytest.raises(ServingError, match="not ready in 2s"):
            starting.result()
    assert backend._children == {} and record(backend.catalog, "4") is None
    with backend.catalog.session() as s:
        (failed,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "endpoint.failed"))
    assert not process_alive(int(failed.details["handle"].rpartition(":")[2]))


def test_stale_records_are_replaced_and_processes_adopted(make_backend: MakeBackend) -> None:
    fake = [sys.executable, "-c", FAKE_SERVER]
    first = make_backend(command=fake)
    endpoint = first.ensure("2")
    pid = pid_of(record(first.catalog, "2"))

    # The platform restarts: the server is still there and is adopted.
    second = make_backend(command=fake)
    assert second.ensure("2") == endpoint and pid_of(record(first.catalog, "2")) == pid

    # The server dies while no platform watches: the record is stale, a new server replaces it.
    os.kill(pid, signal.SIGKILL)
    first.close()  # reaps its dead child
    assert not second.healthy("2")
    third = make_backend(command=fake)
    replaced = third.ensure("2")
    assert replaced.url != endpoint.url and pid_of(record(first.catalog, "2")) != pid
    assert third.healthy("2")

    # A record from another machine: its loopback URL means nothing here.
    with third.catalog.session() as s:
        s.add(
            PolicyEndpoint(
                version="3",
                model_name=MODEL,
                backend="local",
                url="ws://127.0.0.1:1",
                handle="some-other-host:4242",
                started_at=now(),
            )
        )
    assert not third.healthy("3")
    assert third.ensure("3").url != "ws://127.0.0.1:1"
    assert sorted(third.endpoints()) == ["2", "3"]

    third.stop_all()
    assert third.endpoints() == {}
    assert "endpoint.retire" in audit_actions(third.catalog)


def test_versions_must_be_registry_version_numbers(make_backend: MakeBackend) -> None:
    with pytest.raises(ValueError, match="version"):
        make_backend().ensure("champion")
