"""Several API replicas on one PostgreSQL catalog and one S3 store (moto): every decision once.

Each replica is a whole platform app (its own engine pool, ingest service, sweeper, retrain
launcher and rollout controller) served by uvicorn on its own port, as `wamfleet platform serve`
processes would be; they share only the catalog and the bucket, so what keeps them from doing a
thing twice is PostgreSQL's locks. Robots spread their requests over both replicas and commit
each episode on both at once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import ADMIN, WriteEpisode, catalog_on
from tests.integration.api_support import settings_for
from tests.integration.test_api_retrains import WAITS_FOR_GATE, commit_episodes, runner
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.catalog import queries, retrains
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.tables import AuditEntry, Episode, Rollout, RolloutDecision
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.contracts.retrain import RetrainParams
from wamfleet.platform.contracts.rollout import RolloutConfig
from wamfleet.platform.retrains.launcher import LocalLauncher
from wamfleet.platform.retrains.scheduler import check_and_launch
from wamfleet.platform.rollouts.backends.kserve import KServeBackend
from wamfleet.platform.rollouts.controller import RolloutController
from wamfleet.platform.rollouts.registry import AliasRegistry

# Two whole platforms against PostgreSQL and S3: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

REPLICAS = 2


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty PostgreSQL catalog (these tests are about PostgreSQL's locks; SQLite has one writer)."""
    with catalog_on("postgresql", request, tmp_path) as url:
        yield url


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Runs the calls on threads released at the same instant; their results, or what they raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - returned for the test to judge
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a replica's call hung"
    return results


def audits(catalog: Catalog, action: str) -> dict[str, int]:
    """How many times each target got `action` in the audit log."""
    with catalog.session() as s:
        rows = s.execute(
            select(AuditEntry.target, func.count())
            .where(AuditEntry.action == action)
            .group_by(AuditEntry.target)
        )
        return {str(target): int(n) for target, n in rows}


def test_replicas_starting_together_migrate_a_fresh_catalog_once(pg: str) -> None:
    catalogs = together([partial(Catalog, pg) for _ in range(3)])
    assert all(isinstance(c, Catalog) for c in catalogs), catalogs
    for catalog in catalogs:
        with catalog.session() as s:
            assert queries.list_embodiments(s) == []
        catalog.dispose()


@dataclass
class Replica:
    url: str
    app: Any

    @property
    def state(self) -> Any:
        return self.app.state.platform


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest, pg: str, moto_endpoint: str, tmp_path: Path, embodiment: EmbodimentSpec
) -> Iterator[list[Replica]]:
    """Two replicas; upload sessions live `request.param` seconds (60 unless a test sweeps them:
    a short life would expire sessions of robots still uploading on a loaded machine)."""
    host, port = moto_endpoint.split(":")
    shared = {
        "storage_backend": "s3",
        "s3_endpoint": f"{host}:{port}",
        "s3_access_key": "a",
        "s3_secret_key": "b",
        "s3_region": "us-east-1",
        "s3_bucket": f"replicas-{tmp_path.name[-16:].lower().replace('_', '-')}",
        "upload_session_ttl_s": getattr(request, "param", 60),
    }
    apps = together(
        [partial(create_app, settings_for(tmp_path / f"r{i}", pg, **shared)) for i in range(REPLICAS)]
    )
    with serve_in_thread(apps[0]) as url0, serve_in_thread(apps[1]) as url1:
        response = httpx.post(
            f"{url0}/v1/embodiments", json=embodiment.model_dump(mode="json"), headers=ADMIN
        )
        assert response.status_code == 201, response.text
        yield [Replica(url0, apps[0]), Replica(url1, apps[1])]


def register(replica: Replica, robot_id: str) -> dict[str, str]:
    response = httpx.post(
        f"{replica.url}/v1/robots", json={"robot_id": robot_id, "embodiment": "test-arm"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def open_and_put(replica: Replica, robot: dict[str, str], directory: Path, manifest: EpisodeManifest) -> str:
    body = {"manifest": manifest.model_dump(mode="json")}
    response = httpx.post(f"{replica.url}/v1/uploads", json=body, headers=robot)
    assert response.status_code == 201, response.text
    ticket = response.json()
    for target in ticket["files"]:
        put = httpx.put(
            target["url"], content=(directory / target["path"]).read_bytes(), headers=target["headers"]
        )
        assert put.status_code == 200, put.text
    session_id: str = ticket["session_id"]
    return session_id


def commit(replica: Replica, robot: dict[str, str], session_id: str) -> httpx.Response:
    return httpx.post(f"{replica.url}/v1/uploads/{session_id}/commit", headers=robot, timeout=60)


def test_robots_spread_over_two_replicas_commit_each_episode_once(
    replicas: list[Replica], write_episode: WriteEpisode
) -> None:
    robots = 6
    recorded: dict[str, tuple[Path, EpisodeManifest]] = {}
    errors: list[str] = []

    def robot_life(r: int) -> None:
        token = register(replicas[r % REPLICAS], f"robot-{r}")
        for e in range(2):
            directory, manifest = write_episode(frames=4, robot_id=f"robot-{r}")
            recorded[str(manifest.episode_id)] = (directory, manifest)
            session_id = open_and_put(replicas[(r + e) % REPLICAS], token, directory, manifest)
            # A robot whose first commit timed out retries on whichever replica the balancer picks:
            # both replicas commit the same session at the same moment.
            answers = together([partial(commit, rep, token, session_id) for rep in replicas])
            for answer in answers:
                if isinstance(answer, Exception) or answer.status_code != 200:
                    errors.append(f"robot-{r} episode {e}: {answer!r} {getattr(answer, 'text', '')}")
                elif answer.json()["episode_id"] != str(manifest.episode_id):
                    errors.append(f"robot-{r}: commit answered {answer.json()['episode_id']}")

    together([partial(robot_life, r) for r in range(robots)])
    assert errors == []

    catalog, store = replicas[0].state.catalog, replicas[1].state.store
    with catalog.session() as s:
        ids = list(s.scalars(select(Episode.episode_id)))
    assert sorted(ids) == sorted(recorded), "lost or duplicated episodes"
    assert audits(catalog, "episode.commit") == dict.fromkeys(recorded, 1)
    for directory, manifest in recorded.values():
        for entry in manifest.files:
            stored = store.get_bytes(manifest.prefix + entry.path)
            assert stored == (directory / entry.path).read_bytes(), f"{manifest.episode_id}/{entry.path}"
            assert hashlib.sha256(stored).hexdigest() == entry.sha256
    # Nothing staged or half-published is left behind by either replica.
    assert [i.key for i in store.list("uploads/")] == []
    assert [i.key for i in store.list("commits/")] == []


@pytest.mark.parametrize("replicas", [2], indirect=True, ids=["ttl-2s"])
def test_both_replicas_sweeping_expire_each_stale_session_once(
    replicas: list[Replica], write_episode: WriteEpisode
) -> None:
    token = register(replicas[0], "robot-stale")
    sessions = []
    for i in range(4):
        directory, manifest = write_episode(frames=3, robot_id="robot-stale")
        sessions.append(open_and_put(replicas[i % REPLICAS], token, directory, manifest))
    time.sleep(2.2)  # past the sessions' 2 s life
    for _ in range(2):
        results = together([rep.state.ingest.expire_stale_sessions for rep in replicas])
        assert all(isinstance(n, int) for n in results), results
    with replicas[0].state.catalog.session() as s:
        expired = s.scalars(select(AuditEntry.details).where(AuditEntry.action == "upload.expire"))
        per_session = [d["upload"] for d in expired]
    assert sorted(per_session) == sorted(sessions), "each stale session expired exactly once"
    assert [i.key for i in replicas[1].state.store.list("uploads/")] == []


def test_the_retrain_policy_on_two_replicas_launches_one_run(
    pg: str, tmp_path: Path, embodiment: EmbodimentSpec, write_episode: WriteEpisode
) -> None:
    gate = tmp_path / "gate"
    catalogs = [Catalog(pg) for _ in range(REPLICAS)]
    settings = [settings_for(tmp_path / f"r{i}", pg, retrain_min_new_episodes=3) for i in range(REPLICAS)]
    launchers = [
        LocalLauncher(s, c, command=runner(WAITS_FOR_GATE.format(gate=str(gate))))
        for s, c in zip(settings, catalogs, strict=True)
    ]
    try:
        with catalogs[0].session() as s:
            queries.add_embodiment(s, embodiment)
            queries.add_robot(s, "robot-1", embodiment.name, None, "")
        _, template = write_episode(frames=2)
        commit_episodes(catalogs[0], template, 3)
        for _ in range(3):
            together(
                [partial(check_and_launch, *args) for args in zip(catalogs, settings, launchers, strict=True)]
            )
        with catalogs[0].session() as s:
            runs = retrains.list_runs(s)
        assert len(runs) == 1, [(r.run_id, r.status) for r in runs]
        run_id = runs[0].run_id

        gate.touch()  # the runner exits without an outcome: both replicas notice, it fails once
        deadline = time.monotonic() + 60
        while True:
            together([la.poll for la in launchers])
            with catalogs[0].session() as s:
                row = retrains.get_run(s, run_id)
                assert row is not None
                if row.status in retrains.FINISHED:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        together([la.poll for la in launchers])
        assert row.status == "failed"
        assert audits(catalogs[0], "retrain.finish") == {run_id: 1}
    finally:
        for la in launchers:
            la.close()
        for c in catalogs:
            c.dispose()


def test_a_run_two_replicas_finish_at_once_is_finished_once(pg: str) -> None:
    """The second to report waits for the first's transaction, then finds the run final."""
    catalog = Catalog(pg)
    try:
        with catalog.session() as s:
            run_id = retrains.create_run(
                s,
                trigger="manual",
                reason="test",
                requested_by="admin",
                backend="local",
                params=RetrainParams(),
            ).run_id
        second: list[BaseException | None] = []

        def report_second() -> None:
            try:
                with catalog.session() as s:
                    retrains.mark_finished(s, run_id, succeeded=True, actor="launcher:kfp")
                second.append(None)
            except retrains.RetrainRunError as exc:
                second.append(exc)

        with catalog.session() as s:
            retrains.mark_finished(s, run_id, succeeded=False, error="exited 1", actor="launcher:local")
            other = threading.Thread(target=report_second)
            other.start()
            time.sleep(0.5)  # the other replica is now waiting for this row
        other.join(timeout=30)
        assert len(second) == 1 and isinstance(second[0], retrains.RetrainRunError), second
        with catalog.session() as s:
            row = retrains.get_run(s, run_id)
            assert row is not None and (row.status, row.error) == ("failed", "exited 1")
        assert audits(catalog, "retrain.finish") == {run_id: 1}
    finally:
        catalog.dispose()


def test_two_replicas_ticking_one_rollout_apply_each_decision_once(pg: str, tmp_path: Path) -> None:
    """The rollout controller of each replica evaluates the same rollout at the same moment."""
    registry_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    AliasRegistry(registry_uri, "wam").get("champion")  # creates MLflow's tables once, up front
    catalogs = [Catalog(pg) for _ in range(REPLICAS)]
    controllers = [
        # The real KServe backend; with no cluster here its `ensure` fails, is logged, and the
        # tick goes on to its decision, as on a platform whose cluster is briefly unreachable.
        RolloutController(
            c,
            KServeBackend("wamfleet", model_name="wam", image="img", catalog=c),
            AliasRegistry(registry_uri, "wam"),
        )
        for c in catalogs
    ]
    try:
        started = queries.now() - timedelta(seconds=5)
        with catalogs[0].session() as s:
            s.add(
                Rollout(
                    rollout_id="r-1",
                    model_name="wam",
                    candidate_version="2",
                    champion_version="1",
                    stage="shadow",
                    paused=False,
                    awaiting_approval=False,
                    config=RolloutConfig(shadow=False).model_dump(mode="json"),
                    reason="test",
                    created_by="admin",
                    created_at=started,
                    stage_started_at=started,
                )
            )
        applied = together([c.tick for c in controllers])
        assert sorted(len(a) for a in applied) == [0, 1], applied  # one replica advanced, one saw it
        more = together([c.tick for c in controllers])  # canary without evidence: both wait
        assert more == [[], []]
        with catalogs[0].session() as s:
            decisions = s.execute(
                select(RolloutDecision.action, RolloutDecision.from_stage, RolloutDecision.to_stage).where(
                    RolloutDecision.rollout_id == "r-1"
                )
            ).all()
            stage = s.get(Rollout, "r-1")
            assert stage is not None and stage.stage == "canary"
        assert [tuple(d) for d in decisions] == [("advance", "shadow", "canary")]
    finally:
        for c in catalogs:
            c.dispose()


def test_a_catalog_refusing_connections_is_a_503_to_retry_not_a_500(pg: str, tmp_path: Path) -> None:
    """What robots met at 4 replicas when their pools outgrew max_connections ("too many clients"):
    the request must say "retry later", and the same request must work once the catalog is back."""
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine, text

    name = pg.rsplit("/", 1)[1]
    admin = create_engine(pg.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with TestClient(create_app(settings_for(tmp_path, pg))) as client:
        assert client.get("/v1/episodes", headers=ADMIN).status_code == 200
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": name},
                )
            refused = client.get("/v1/episodes", headers=ADMIN)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["detail"].startswith("catalog unavailable, retry:")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
            admin.dispose()
        assert client.get("/v1/episodes", headers=ADMIN).status_code == 200
