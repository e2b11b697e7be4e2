"""Retrain runs through the real API and real runner processes; the policy on real catalog facts.

Runners are small `python -c` programs standing in for `wamfleet retrain --run-id`: one records
its outcome in the catalog (reaching it through the environment the launcher gives it), one fails,
one waits for a gate file, so every path of launching and reaping runs for real.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import ADMIN, WriteEpisode
from tests.integration.api_support import settings_for
from wamfleet.platform.api.app import create_app
from wamfleet.platform.catalog import queries, retrains
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.tables import AuditEntry
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.contracts.retrain import RetrainParams, RetrainRunInfo
from wamfleet.platform.retrains.launcher import KfpLauncher, LocalLauncher, RetrainLauncher
from wamfleet.platform.retrains.scheduler import check_and_launch
from wamfleet.platform.settings import Settings

RECORDS_OUTCOME = """
import sys
from pathlib import Path
from wamfleet.platform.catalog import retrains
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.settings import Settings

run_id = sys.argv[sys.argv.index("--run-id") + 1]
settings = Settings()
print("cwd", Path.cwd().resolve())
catalog = Catalog(settings.effective_catalog_url, run_migrations=False)
with catalog.session() as s:
    retrains.mark_running(s, run_id)
with catalog.session() as s:
    retrains.mark_finished(
        s, run_id, succeeded=True, snapshot_hash="a" * 64, dataset_hash="b" * 64,
        model_version="7", candidate=True,
    )
catalog.dispose()
"""
FAILS = """
import sys
print("loading 12 episodes")
print("boom: CUDA out of memory", file=sys.stderr)
sys.exit(1)
"""
WAITS_FOR_GATE = """
import pathlib, sys, time
gate = pathlib.Path({gate!r})
deadline = time.monotonic() + 60
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(3)
"""


def runner(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@contextmanager
def client_for(settings: Settings, launcher: RetrainLauncher | None = None) -> Iterator[TestClient]:
    with TestClient(create_app(settings, launcher=launcher)) as client:
        yield client


def wait_finished(
    catalog: Catalog, launcher: RetrainLauncher, run_id: str, timeout: float = 60
) -> RetrainRunInfo:
    """Polls like the platform's loop does until the run is succeeded or failed."""
    deadline = time.monotonic() + timeout
    while True:
        launcher.poll()
        with catalog.session() as s:
            row = retrains.get_run(s, run_id)
            assert row is not None
            info = retrains.run_info(row)
        if info.status in retrains.FINISHED:
            return info
        assert time.monotonic() < deadline, f"run {run_id} still {info.status}"
        time.sleep(0.05)


def catalog_of(client: TestClient) -> Catalog:
    catalog: Catalog = client.app.state.platform.catalog  # type: ignore[attr-defined]
    return catalog


def post(client: TestClient, body: dict[str, Any] | None = None, headers: dict[str, str] = ADMIN) -> Any:
    return client.post("/v1/retrains", json=body or {}, headers=headers)


def test_admin_request_launches_a_runner_that_records_its_outcome(tmp_path: Path, catalog_url: str) -> None:
    settings = settings_for(tmp_path, catalog_url)
    launcher = LocalLauncher(settings, command=runner(RECORDS_OUTCOME))
    with client_for(settings, launcher) as client:
        response = post(client, {"reason": "new sites", "params": {"steps": 20, "mode": "lora"}})
        assert response.status_code == 201, response.text
        run = RetrainRunInfo.model_validate(response.json())
        assert (run.trigger, run.requested_by, run.backend, run.reason) == (
            "manual",
            "admin",
            "local",
            "new sites",
        )
        assert run.params == RetrainParams(steps=20, mode="lora")
        assert run.external_id is not None and re.fullmatch(r".+:\d+", run.external_id)  # host:pid

        done = wait_finished(catalog_of(client), launcher, run.run_id)
        assert done.status == "succeeded", done.error
        assert (done.model_version, done.candidate, done.error) == ("7", True, None)
        assert done.started_at is not None and done.finished_at is not None
        assert client.get(f"/v1/retrains/{run.run_id}", headers=ADMIN).json() == done.model_dump(mode="json")

        log = (settings.data_dir / "retrains" / f"{run.run_id}.log").read_text()
        assert f"cwd {settings.data_dir.resolve()}" in log
        with catalog_of(client).session() as s:
            entries = list(s.scalars(select(AuditEntry).where(AuditEntry.target == run.run_id)))
        assert [e.action for e in entries] == ["retrain.create", "retrain.start", "retrain.finish"]
        assert entries[0].actor == "admin"
        assert entries[2].details["model_version"] == "7"
        assert entries[2].details["status"] == "succeeded"


def test_second_request_conflicts_until_forced(tmp_path: Path, catalog_url: str) -> None:
    gate = tmp_path / "gate"
    settings = settings_for(tmp_path, catalog_url)
    launcher = LocalLauncher(settings, command=runner(WAITS_FOR_GATE.format(gate=str(gate))))
    with client_for(settings, launcher) as client:
        first = post(client, {"reason": "first"})
        assert first.status_code == 201, first.text
        first_id = first.json()["run_id"]

        conflict = post(client, {"reason": "second"})
        assert conflict.status_code == 409
        assert first_id in conflict.json()["detail"]
        assert "force" in conflict.json()["detail"]

        forced = post(client, {"reason": "second", "force": True})
        assert forced.status_code == 201, forced.text
        second_id = forced.json()["run_id"]
        listed = client.get("/v1/retrains", headers=ADMIN).json()
        assert [r["run_id"] for r in listed] == [second_id, first_id]  # newest first
        queued = client.get("/v1/retrains", params={"status": "queued"}, headers=ADMIN).json()
        assert {r["run_id"] for r in queued} == {first_id, second_id}

        gate.touch()  # both runners exit 3 without recording anything
        for run_id in (first_id, second_id):
            failed = wait_finished(catalog_of(client), launcher, run_id)
            assert failed.status == "failed"
            assert failed.error is not None and "runner exited with code 3" in failed.error
        again = post(client, {"reason": "after"})
        assert again.status_code == 201, again.text
        wait_finished(catalog_of(client), launcher, again.json()["run_id"])


def test_a_runner_exiting_nonzero_is_failed_with_its_log_tail(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    launcher = LocalLauncher(settings, command=runner(FAILS))
    with client_for(settings, launcher) as client:
        run_id = post(client).json()["run_id"]
        failed = wait_finished(catalog_of(client), launcher, run_id)
        assert failed.status == "failed"
        assert failed.error is not None
        assert "runner exited with code 1" in failed.error
        assert "loading 12 episodes\nboom: CUDA out of memory" in failed.error
        assert launcher.running() == {}  # reaped
        listed = client.get("/v1/retrains", params={"status": "failed"}, headers=ADMIN).json()
        assert [r["run_id"] for r in listed] == [run_id]
        assert client.get("/v1/retrains", params={"status": "running"}, headers=ADMIN).json() == []


def test_a_launch_that_raises_is_recorded_as_failed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    launcher = LocalLauncher(settings, command=[str(tmp_path / "no-such-runner")])
    with client_for(settings, launcher) as client:
        response = post(client)
        assert response.status_code == 502
        detail = response.json()["detail"]
        assert "could not be launched on local" in detail
        assert "FileNotFoundError" in detail
        [run] = client.get("/v1/retrains", headers=ADMIN).json()
        assert run["run_id"] in detail
        assert run["status"] == "failed"
        assert "launch on local failed" in run["error"]


def test_auth_validation_and_not_found(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    launcher = LocalLauncher(settings, command=runner(FAILS))
    with client_for(settings, launcher) as client:
        assert client.post(
            "/v1/embodiments", json=embodiment.model_dump(mode="json"), headers=ADMIN
        ).is_success
        token = client.post(
            "/v1/robots", json={"robot_id": "robot-1", "embodiment": embodiment.name}, headers=ADMIN
        ).json()["token"]
        robot = {"Authorization": f"Bearer {token}"}

        assert client.post("/v1/retrains", json={}).status_code == 401
        assert client.get("/v1/retrains").status_code == 401
        for response in (
            post(client, headers=robot),
            client.get("/v1/retrains", headers=robot),
            client.get("/v1/retrains/x", headers=robot),
        ):
            assert response.status_code == 403
            assert "admin" in response.json()["detail"]

        bad = post(client, {"params": {"steps": 0}})
        assert bad.status_code == 422
        assert ["body", "params", "steps"] in [e["loc"] for e in bad.json()["detail"]]
        unknown = post(client, {"params": {"stepz": 3}})
        assert unknown.status_code == 422
        assert ["body", "params", "stepz"] in [e["loc"] for e in unknown.json()["detail"]]
        assert client.get("/v1/retrains", params={"status": "done"}, headers=ADMIN).status_code == 422

        missing = client.get("/v1/retrains/0190aaaa-0000-7000-8000-000000000000", headers=ADMIN)
        assert missing.status_code == 404
        assert "0190aaaa-0000-7000-8000-000000000000" in missing.json()["detail"]
        assert client.get("/v1/retrains", headers=ADMIN).json() == []  # nothing was launched


# The policy on catalog facts -------------------------------------------------------------------


def commit_episodes(catalog: Catalog, template: EpisodeManifest, count: int) -> None:
    with catalog.session() as s:
        for _ in range(count):
            queries.add_episode(s, template.model_copy(update={"episode_id": new_episode_id()}))


@pytest.fixture
def fleet_catalog(catalog_url: str, embodiment: EmbodimentSpec) -> Iterator[Catalog]:
    catalog = Catalog(catalog_url)
    with catalog.session() as s:
        queries.add_embodiment(s, embodiment)
        queries.add_robot(s, "robot-1", embodiment.name, None, "")
    yield catalog
    catalog.dispose()


def test_policy_triggers_after_n_new_episodes_and_not_while_active(
    tmp_path: Path, fleet_catalog: Catalog, write_episode: WriteEpisode
) -> None:
    gate = tmp_path / "gate"
    settings = settings_for(tmp_path, fleet_catalog.url, retrain_min_new_episodes=3)
    launcher = LocalLauncher(settings, fleet_catalog, command=runner(WAITS_FOR_GATE.format(gate=str(gate))))
    _, template = write_episode(frames=2)

    commit_episodes(fleet_catalog, template, 2)
    assert check_and_launch(fleet_catalog, settings, launcher) is None
    commit_episodes(fleet_catalog, template, 1)
    run = check_and_launch(fleet_catalog, settings, launcher)
    assert run is not None
    assert (run.trigger, run.requested_by, run.status) == ("policy", "policy", "queued")
    assert run.reason.startswith("3 new episodes ever (no snapshot yet) (threshold 3)")
    assert run.run_id in launcher.running()

    commit_episodes(fleet_catalog, template, 5)
    assert check_and_launch(fleet_catalog, settings, launcher) is None  # one is active

    gate.touch()
    assert wait_finished(fleet_catalog, launcher, run.run_id).status == "failed"
    # 5 episodes came after the failed run: that is new data, so the policy tries again.
    retry = check_and_launch(fleet_catalog, settings, launcher)
    assert retry is not None
    assert "5 new episodes since the last run" in retry.reason
    assert wait_finished(fleet_catalog, launcher, retry.run_id).status == "failed"
    # Nothing new since the retry failed: no third attempt on the same data.
    assert check_and_launch(fleet_catalog, settings, launcher) is None
    with fleet_catalog.session() as s:
        assert len(retrains.list_runs(s)) == 2


def test_a_restarted_platform_fails_local_runs_whose_process_is_gone(
    tmp_path: Path, fleet_catalog: Catalog
) -> None:
    gate = tmp_path / "gate"
    settings = settings_for(tmp_path, fleet_catalog.url)
    before = LocalLauncher(settings, fleet_catalog, command=runner(WAITS_FOR_GATE.format(gate=str(gate))))
    with fleet_catalog.session() as s:
        row = retrains.create_run(
            s, trigger="manual", reason="", requested_by="admin", backend="local", params=RetrainParams()
        )
        run = retrains.run_info(row)
    with fleet_catalog.session() as s:
        retrains.mark_running(s, run.run_id, before.launch(run))

    after = LocalLauncher(settings, fleet_catalog)  # the platform restarted; the runner lives on
    after.poll()
    with fleet_catalog.session() as s:
        assert retrains.get_run(s, run.run_id).status == "running"  # type: ignore[union-attr]
    gate.touch()
    before._running.popitem()[1].process.wait()  # the runner dies without recording anything
    failed = wait_finished(fleet_catalog, after, run.run_id)
    assert failed.error is not None and "is gone without recording an outcome" in failed.error


def test_the_platform_loop_runs_the_policy(
    tmp_path: Path, embodiment: EmbodimentSpec, write_episode: WriteEpisode
) -> None:
    settings = settings_for(
        tmp_path,
        f"sqlite:///{tmp_path / 'catalog.db'}",
        retrain_min_new_episodes=2,
        retrain_check_interval_s=0.1,
    )
    launcher = LocalLauncher(settings, command=runner(RECORDS_OUTCOME))
    _, template = write_episode(frames=2)
    with client_for(settings, launcher) as client:
        catalog = catalog_of(client)
        with catalog.session() as s:
            queries.add_embodiment(s, embodiment)
            queries.add_robot(s, "robot-1", embodiment.name, None, "")
        commit_episodes(catalog, template, 2)
        deadline = time.monotonic() + 30
        while not (runs := client.get("/v1/retrains", headers=ADMIN).json()):
            assert time.monotonic() < deadline, "the policy loop never launched a retrain"
            time.sleep(0.05)
        [run] = runs
        assert (run["trigger"], run["requested_by"]) == ("policy", "policy")
        assert wait_finished(catalog, launcher, run["run_id"]).status == "succeeded"
        time.sleep(0.5)  # several more checks: no new episodes since the run, nothing new starts
        assert len(client.get("/v1/retrains", headers=ADMIN).json()) == 1


# Kubeflow Pipelines, with a stand-in client ------------------------------------------------------


class FakeKfp:
    """The slice of `kfp.Client` the launcher uses, with runs whose state the test sets."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.runs: dict[str, SimpleNamespace] = {}

    def get_pipeline_id(self, name: str) -> str | None:
        return "pipeline-1" if name == "continuous-finetune" else None

    def list_pipeline_versions(self, pipeline_id: str, **_: Any) -> SimpleNamespace:
        assert pipeline_id == "pipeline-1"
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(pipeline_version_id="version-9")])

    def create_experiment(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(experiment_id=f"experiment-{name}")

    def run_pipeline(self, **kwargs: Any) -> SimpleNamespace:
        self.submitted.append(kwargs)
        run_id = f"kfp-{len(self.submitted)}"
        self.runs[run_id] = SimpleNamespace(state="PENDING", error=None)
        return SimpleNamespace(run_id=run_id)

    def get_run(self, run_id: str) -> SimpleNamespace:
        return self.runs[run_id]


def test_kfp_launcher_submits_the_latest_version_and_follows_the_run(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", kfp_host="http://kfp.invalid")
    fake = FakeKfp()
    launcher = KfpLauncher("http://kfp.invalid", settings, client=fake)
    with client_for(settings, launcher) as client:
        catalog = catalog_of(client)
        run = post(client, {"params": {"steps": 40}}).json()
        assert (run["backend"], run["external_id"], run["status"]) == ("kfp", "kfp-1", "queued")
        [submitted] = fake.submitted
        assert submitted["pipeline_id"] == "pipeline-1"
        assert submitted["version_id"] == "version-9"
        assert submitted["experiment_id"] == "experiment-wamfleet"
        assert submitted["params"]["retrain_run_id"] == run["run_id"]
        assert RetrainParams.model_validate(json.loads(submitted["params"]["params_json"])).steps == 40

        fake.runs["kfp-1"].state = "RUNNING"
        launcher.poll()
        assert client.get(f"/v1/retrains/{run['run_id']}", headers=ADMIN).json()["status"] == "running"
        fake.runs["kfp-1"].state = "FAILED"
        fake.runs["kfp-1"].error = SimpleNamespace(message="finetune: OOMKilled")
        failed = wait_finished(catalog, launcher, run["run_id"])
        assert failed.error == "KFP run kfp-1 ended FAILED: finetune: OOMKilled"

        second = post(client).json()
        fake.runs["kfp-2"].state = "SUCCEEDED"
        assert wait_finished(catalog, launcher, second["run_id"]).status == "succeeded"

        launcher.pipeline_name = "not-uploaded"
        refused = post(client)
        assert refused.status_code == 502
        assert "no pipeline named 'not-uploaded' on http://kfp.invalid" in refused.json()["detail"]
