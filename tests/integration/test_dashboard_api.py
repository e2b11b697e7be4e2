"""The dashboard's read API (GET /v1/dashboard/...) and its page, against a real app.

Episodes go in through the robots' upload flow; datasets are frozen, validated and curated by the
pipeline's own functions; model versions live in a real MLflow registry (SQLite in tmp); rollouts
are started and acted on through the admin API, and their evidence comes from the robots'
autonomous episodes and their policy tags.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ADMIN, ADMIN_TOKEN, MakeMlflowStore, frame_images
from tests.integration.api_support import Api, running_api, settings_for
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.pipelines.curate import curate, save_curated
from wamfleet.pipelines.snapshot import freeze_snapshot
from wamfleet.pipelines.validate import validate_snapshot
from wamfleet.platform.api.dashboard import STATIC_DIR
from wamfleet.platform.catalog import retrains
from wamfleet.platform.contracts import EmbodimentSpec, Outcome
from wamfleet.platform.contracts.curation import CurationRecipe
from wamfleet.platform.contracts.dashboard import (
    DashboardInfo,
    DatasetView,
    EpisodeMedia,
    ModelsView,
    RobotRow,
    RolloutView,
)
from wamfleet.platform.contracts.dataset import SnapshotQuery
from wamfleet.platform.contracts.episode import EpisodeSource, bundle_prefix
from wamfleet.platform.contracts.ingest import EpisodePage
from wamfleet.platform.contracts.retrain import RetrainParams, RetrainRunInfo

READS = [
    "/v1/dashboard/info",
    "/v1/dashboard/robots",
    "/v1/dashboard/episodes",
    "/v1/dashboard/datasets",
    "/v1/dashboard/models",
    "/v1/dashboard/retrains",
    "/v1/dashboard/rollouts",
]
MODEL = "wamfleet-policy"
MLFLOW_UI = "http://mlflow.example.org:5000/"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def record(
    api: Api,
    robot: dict[str, str],
    directory: Path,
    spec: EmbodimentSpec,
    *,
    robot_id: str,
    task: str = "stack the blocks",
    success: bool | None = True,
    source: EpisodeSource = EpisodeSource.teleop,
    policy_version: str | None = None,
    tags: dict[str, str] | None = None,
    frames: int = 12,
) -> str:
    """Records a small episode with this outcome and uploads and commits it as the robot; its id."""
    with EpisodeWriter(
        directory / uuid.uuid4().hex,
        robot_id=robot_id,
        embodiment=spec,
        task=task,
        source=source,
        policy_version=policy_version,
        tags=tags,
    ) as writer:
        for i in range(frames):
            state = np.arange(spec.state_dim, dtype=np.float32) + i * 0.5
            action = np.linspace(-1, 1, spec.action_dim, dtype=np.float32) * (i + 1)
            writer.add_frame(frame_images(spec, i), state, action)
        manifest = writer.close(Outcome(success=success, progress=1.0 if success else 0.4))
    ticket = api.upload(robot, writer.directory, manifest)
    committed = api.commit(robot, ticket["session_id"])
    assert committed.status_code == 200, committed.text
    return str(manifest.episode_id)


def get(api: Api, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    response = api.client.get(path, params=params, headers=headers or {})
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


def registry_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def registry(tmp_path: Path, mlflow_store: MakeMlflowStore) -> str:
    """This test's own MLflow store (a copy of the session's empty one); its tracking URI."""
    return mlflow_store(tmp_path / "mlflow.db")


@pytest.fixture
def api(tmp_path: Path, catalog_url: str, embodiment: EmbodimentSpec, registry: str) -> Iterator[Api]:
    with running_api(settings_for(tmp_path, catalog_url, mlflow_tracking_uri=registry), embodiment) as api:
        yield api


# The page ------------------------------------------------------------------------------------


def test_page_and_assets_are_served_and_load_nothing_from_elsewhere(api: Api) -> None:
    page = api.client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        assert f'"/dashboard/assets/{asset}"' in page.text
        served = api.client.get(f"/dashboard/assets/{asset}")
        assert served.status_code == 200
        assert kind in served.headers["content-type"]
        assert served.text == (STATIC_DIR / asset).read_text()
    for name in ("index.html", "app.js", "app.css"):  # offline: no CDN, no remote font
        assert "://" not in (STATIC_DIR / name).read_text(), name
    # Data reaches the DOM as text only: the script never assigns HTML.
    script = (STATIC_DIR / "app.js").read_text()
    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", script)


# Who may read ----------------------------------------------------------------------------------


def test_anonymous_reading_admin_token_and_robot_tokens(api: Api) -> None:
    robot = api.register_robot("robot-1")
    for path in READS:
        get(api, path)
    assert get(api, "/v1/dashboard/info")["viewer"] == "anonymous"
    assert get(api, "/v1/dashboard/info", ADMIN)["viewer"] == "admin"
    for path in READS:
        assert api.client.get(path, headers=robot).status_code == 401, path
        assert api.client.get(path, headers=bearer("not-a-token")).status_code == 401, path
    # Reading anonymously never extends to the admin routes the page's buttons call.
    assert api.client.post("/v1/retrains", json={}).status_code == 401
    assert api.client.get("/v1/retrains").status_code == 401


def test_without_anonymous_reading_only_the_admin_token_reads(
    tmp_path: Path, embodiment: EmbodimentSpec, registry: str
) -> None:
    settings = settings_for(
        tmp_path,
        f"sqlite:///{tmp_path / 'catalog.db'}",
        dashboard_anonymous_read=False,
        mlflow_tracking_uri=registry,
    )
    with running_api(settings, embodiment) as api:
        robot = api.register_robot("robot-1")
        for path in READS:
            refused = api.client.get(path)
            assert refused.status_code == 401, path
            assert "WAMFLEET_DASHBOARD_ANONYMOUS_READ" in refused.json()["detail"]
            assert api.client.get(path, headers=robot).status_code == 401, path
            get(api, path, ADMIN)
        info = DashboardInfo.model_validate(get(api, "/v1/dashboard/info", ADMIN))
        assert (info.viewer, info.anonymous_read) == ("admin", False)
        # The page itself is static and loads; it asks for the token when /info answers 401.
        assert api.client.get("/dashboard").status_code == 200


@pytest.mark.parametrize(
    ("host", "anonymous", "warned"),
    [
        ("127.0.0.1", True, False),  # the embedded default: only this machine reaches it
        ("localhost", True, False),
        ("::1", True, False),
        ("0.0.0.0", True, True),
        ("192.168.1.20", True, True),
        ("platform.example.org", True, True),
        ("0.0.0.0", False, False),
    ],
)
def test_anonymous_reading_on_a_reachable_address_is_a_startup_warning(
    tmp_path: Path,
    embodiment: EmbodimentSpec,
    caplog: pytest.LogCaptureFixture,
    host: str,
    anonymous: bool,
    warned: bool,
) -> None:
    """Anonymous reads hand out every robot's episodes with working signed video URLs: fine on
    127.0.0.1 (the embedded default), loudly flagged anywhere else."""
    settings = settings_for(
        tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", api_host=host, dashboard_anonymous_read=anonymous
    )
    with (
        caplog.at_level(logging.WARNING, logger="wamfleet.platform.api.app"),
        running_api(settings, embodiment),
    ):
        pass
    warnings = [r for r in caplog.records if "WAMFLEET_DASHBOARD_ANONYMOUS_READ" in r.getMessage()]
    assert bool(warnings) == warned
    assert all(r.levelno == logging.WARNING and host in r.getMessage() for r in warnings)


def test_platform_serve_judges_the_address_it_really_binds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wamfleet platform serve --host 0.0.0.0` binds 0.0.0.0 whatever WAMFLEET_API_HOST says."""
    import uvicorn

    from wamfleet.platform.api import app as app_module
    from wamfleet.platform.cli import platform_cmd

    seen: dict[str, Any] = {}
    monkeypatch.setenv("WAMFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WAMFLEET_API_HOST", "127.0.0.1")
    monkeypatch.setattr(app_module, "create_app", lambda settings: seen.setdefault("settings", settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: seen.update(host=host, port=port))
    platform_cmd.serve(host="0.0.0.0", port=8123)
    assert seen["settings"].api_host == seen["host"] == "0.0.0.0"
    assert seen["settings"].api_port == seen["port"] == 8123


# Robots and episodes -----------------------------------------------------------------------------


def test_robots_episodes_filters_and_newest_first_paging(
    api: Api, tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    a = api.register_robot("robot-a")
    b = api.register_robot("robot-b")
    api.register_robot("robot-idle")
    ids = [
        record(api, a, tmp_path, embodiment, robot_id="robot-a", task="Stack the blocks"),
        record(api, a, tmp_path, embodiment, robot_id="robot-a", task="open the drawer", success=False),
        record(
            api,
            b,
            tmp_path,
            embodiment,
            robot_id="robot-b",
            task="stack the cups",
            source=EpisodeSource.autonomous,
            policy_version="wamfleet-policy/3",
        ),
        record(
            api,
            b,
            tmp_path,
            embodiment,
            robot_id="robot-b",
            task="open the drawer",
            source=EpisodeSource.autonomous,
            policy_version="wamfleet-policy/4",
            success=None,
        ),
        record(api, b, tmp_path, embodiment, robot_id="robot-b", task="wipe the table"),
    ]
    newest_first = ids[::-1]

    def search(**params: Any) -> list[str]:
        page = EpisodePage.model_validate(get(api, "/v1/dashboard/episodes", **params))
        return [str(e.episode_id) for e in page.items]

    assert search() == newest_first
    # Paging: each page continues where the last stopped, newest first, none twice.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = EpisodePage.model_validate(get(api, "/v1/dashboard/episodes", **params))
        seen += [str(e.episode_id) for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(page.items) == 2
    assert seen == newest_first

    assert search(robot_id="robot-a") == [ids[1], ids[0]]
    assert search(task="stack") == [ids[2], ids[0]]  # a substring, any case
    assert search(task="drawer", robot_id="robot-b") == [ids[3]]
    assert search(success="false") == [ids[1]]
    assert search(success="true") == [ids[4], ids[2], ids[0]]
    assert search(source="autonomous") == [ids[3], ids[2]]
    assert search(policy_version="wamfleet-policy/3") == [ids[2]]
    assert search(policy_version="wamfleet-policy") == []  # a version is matched exactly
    assert api.client.get("/v1/dashboard/episodes", params={"source": "dreamed"}).status_code == 422

    robots = {r.robot_id: r for r in map(RobotRow.model_validate, get(api, "/v1/dashboard/robots"))}
    assert sorted(robots) == ["robot-a", "robot-b", "robot-idle"]
    assert (robots["robot-a"].episodes, robots["robot-b"].episodes, robots["robot-idle"].episodes) == (
        2,
        3,
        0,
    )
    assert robots["robot-a"].last_seen_at is not None  # its uploads authenticated it
    assert robots["robot-idle"].last_seen_at is None
    assert robots["robot-a"].assigned_version is None  # never asked for a policy

    info = DashboardInfo.model_validate(get(api, "/v1/dashboard/info"))
    assert info.counts.model_dump() == {
        "robots": 3,
        "episodes": 5,
        "autonomous_episodes": 2,
        "snapshots": 0,
        "retrains": 0,
        "rollouts": 0,
    }


def test_episode_media_gives_playable_signed_video_urls(
    api: Api, tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    robot = api.register_robot("robot-1")
    episode_id = record(api, robot, tmp_path, embodiment, robot_id="robot-1", tags={"scene": "kitchen"})
    media = EpisodeMedia.model_validate(get(api, f"/v1/dashboard/episodes/{episode_id}"))
    assert str(media.episode.episode_id) == episode_id
    assert media.instruction == "stack the blocks"
    assert media.episode.tags == {"scene": "kitchen"}
    assert [(v.camera, v.path, v.width, v.height) for v in media.videos] == [
        (c.name, f"videos/{c.name}.mp4", c.width, c.height) for c in embodiment.cameras
    ]
    stored = api.state.store
    for video in media.videos:
        assert video.url.startswith("/v1/objects/")  # the local store's signed URL, no token needed
        played = api.client.get(video.url)
        assert played.status_code == 200
        assert played.headers["content-type"] == "video/mp4"
        assert played.content == stored.get_bytes(bundle_prefix("robot-1", episode_id) + video.path)
        assert played.content[4:8] == b"ftyp"  # an MP4 container
        # Seeking in a <video> asks for byte ranges.
        ranged = api.client.get(video.url, headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        tampered = video.url.replace("signature=", "signature=0")
        assert api.client.get(tampered).status_code in (401, 403)
    assert api.client.get(f"/v1/dashboard/episodes/{uuid.uuid4()}").status_code == 404


def test_episode_downloads_as_an_mcap_foxglove_opens(
    api: Api, tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    from tests.integration.test_mcap_export import read_mcap

    robot = api.register_robot("robot-1")
    episode_id = record(api, robot, tmp_path, embodiment, robot_id="robot-1", frames=6)
    path = f"/v1/dashboard/episodes/{episode_id}/mcap"
    response = api.client.get(path)
    assert response.status_code == 200, response.text
    assert f"{episode_id}.mcap" in response.headers["content-disposition"]
    saved = tmp_path / "download.mcap"
    saved.write_bytes(response.content)
    channels, messages, _ = read_mcap(saved)
    cameras = [c.name for c in embodiment.cameras]
    assert {t for t in channels if any(c in t for c in cameras)}, f"no camera topics in {sorted(channels)}"
    assert all(len(m) == 6 for m in messages.values()), {t: len(m) for t, m in messages.items()}
    assert api.client.get(f"/v1/dashboard/episodes/{uuid.uuid4()}/mcap").status_code == 404
    assert api.client.get("/v1/dashboard/episodes/not-an-id/mcap").status_code == 422
    # A robot's token is no viewer's; the bundle's files gone from the store is a 404 naming it.
    assert api.client.get(path, headers=robot).status_code == 401
    for info in api.state.store.list(bundle_prefix("robot-1", episode_id)):
        api.state.store.delete(info.key)
    gone = api.client.get(path)
    assert gone.status_code == 404 and "not in the store" in gone.json()["detail"]


# Datasets and retrains --------------------------------------------------------------------------


def test_datasets_show_each_curation_report_of_a_snapshot(
    api: Api, tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    robot = api.register_robot("robot-1")
    for k in range(3):
        record(api, robot, tmp_path, embodiment, robot_id="robot-1", task=f"task {k % 2}", frames=16)
    catalog, store = api.state.catalog, api.state.store
    snapshot = freeze_snapshot(catalog, store, SnapshotQuery())
    checks = validate_snapshot(catalog, store, snapshot)
    ok = [c.episode_id for c in checks.results if c.status == "ok"]
    recipe = CurationRecipe(min_frames=4)
    dataset = curate(snapshot, ok, api.settings, recipe, workers=0)
    save_curated(store, dataset)

    # A succeeded retrain that curated it, and one whose curated dataset is not in the store.
    with catalog.session() as s:
        done = retrains.create_run(
            s,
            trigger="manual",
            reason="new data",
            requested_by="admin",
            backend="local",
            params=RetrainParams(),
        )
        lost = retrains.create_run(
            s,
            trigger="policy",
            reason="500 new",
            requested_by="policy",
            backend="local",
            params=RetrainParams(),
        )
        untouched = retrains.create_run(
            s, trigger="manual", reason="", requested_by="admin", backend="local", params=RetrainParams()
        )
        done_id, lost_id, untouched_id = done.run_id, lost.run_id, untouched.run_id
    with catalog.session() as s:
        retrains.mark_finished(
            s,
            done_id,
            succeeded=True,
            snapshot_hash=snapshot.snapshot_hash,
            dataset_hash=dataset.dataset_hash,
            model_version="1",
            candidate=True,
        )
        retrains.mark_finished(
            s,
            lost_id,
            succeeded=False,
            error="finetune: out of memory",
            snapshot_hash=snapshot.snapshot_hash,
            dataset_hash="f" * 64,
        )

    [view] = [DatasetView.model_validate(v) for v in get(api, "/v1/dashboard/datasets")]
    assert view.snapshot_hash == snapshot.snapshot_hash
    assert view.episode_count == 3
    assert view.key == f"datasets/{snapshot.snapshot_hash}/snapshot.json"
    assert [(c.retrain_run_id, c.dataset_hash) for c in view.curated] == [
        (done_id, dataset.dataset_hash),
        (lost_id, "f" * 64),
    ]
    curated, missing = view.curated
    assert curated.model_version == "1" and curated.error is None
    assert curated.report == dataset.report  # exactly what curation recorded
    assert curated.report.episodes_in == 3
    assert curated.report.kept + curated.report.duplicates_removed + sum(curated.report.dropped.values()) == 3
    assert missing.report is None
    assert missing.error == "the curated dataset is not in the object store"

    runs = [RetrainRunInfo.model_validate(r) for r in get(api, "/v1/dashboard/retrains")]
    assert [r.run_id for r in runs] == [untouched_id, lost_id, done_id]  # newest first
    assert [r.status for r in runs] == ["queued", "failed", "succeeded"]
    assert runs[1].error == "finetune: out of memory"
    assert get(api, "/v1/dashboard/retrains", limit=1)[0]["run_id"] == untouched_id
    counts = get(api, "/v1/dashboard/info")["counts"]
    assert (counts["snapshots"], counts["retrains"]) == (1, 3)


# Models and rollouts -----------------------------------------------------------------------------


def make_registry(tmp_path: Path) -> dict[str, str]:
    """Two versions of the registered model as the pipeline leaves them: run metrics, lineage tags,
    aliases (1 champion, 2 candidate). A real MLflow on SQLite, through a client with an explicit URI."""
    from mlflow import MlflowClient

    uri = registry_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("wamfleet-retrain", artifact_location=str(tmp_path / "mlartifacts"))
    client.create_registered_model(MODEL)
    out = {"experiment": experiment}
    for version, success in (("1", 0.5), ("2", 0.75)):
        run_id = client.create_run(experiment).info.run_id
        client.log_metric(run_id, "eval_success_rate", success)
        client.log_metric(run_id, "train_loss", 1.0, step=0)
        client.log_metric(run_id, "train_loss", 0.25, step=1)  # the latest value is shown
        client.set_terminated(run_id)
        tags = {"wamfleet.snapshot": "a" * 64, "wamfleet.dataset": version * 64, "team": "not lineage"}
        created = client.create_model_version(
            MODEL, source=f"runs:/{run_id}/policy", run_id=run_id, tags=tags
        )
        assert str(created.version) == version
        out[f"run{version}"] = run_id
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "previous", "1")
    client.set_registered_model_alias(MODEL, "candidate", "2")
    return out


def test_models_show_versions_metrics_lineage_and_mlflow_links(
    tmp_path: Path, embodiment: EmbodimentSpec, registry: str
) -> None:
    uri = registry
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    with running_api(settings_for(tmp_path, catalog, mlflow_tracking_uri=uri), embodiment) as api:
        empty = ModelsView.model_validate(get(api, "/v1/dashboard/models"))
        assert (empty.model_name, empty.versions, empty.error, empty.mlflow_ui_url) == (MODEL, [], None, None)
        ids = make_registry(tmp_path)
        plain = ModelsView.model_validate(get(api, "/v1/dashboard/models"))
        assert [v.version for v in plain.versions] == ["2", "1"]
        assert all(v.mlflow_version_url is None and v.mlflow_run_url is None for v in plain.versions)

    settings = settings_for(tmp_path, catalog, mlflow_tracking_uri=uri, mlflow_ui_url=MLFLOW_UI)
    with running_api(settings, embodiment) as api:
        view = ModelsView.model_validate(get(api, "/v1/dashboard/models"))
        assert view.error is None and view.mlflow_ui_url == MLFLOW_UI
        two, one = view.versions
        assert (two.version, two.aliases, one.aliases) == ("2", ["candidate"], ["champion", "previous"])
        assert two.run_id == ids["run2"] and two.status == "READY" and two.created_at is not None
        assert two.metrics == {"eval_success_rate": 0.75, "train_loss": 0.25}
        assert two.lineage == {"wamfleet.snapshot": "a" * 64, "wamfleet.dataset": "2" * 64}
        base = MLFLOW_UI.rstrip("/")
        assert two.mlflow_version_url == f"{base}/#/models/{MODEL}/versions/2"
        assert two.mlflow_run_url == f"{base}/#/experiments/{ids['experiment']}/runs/{ids['run2']}"
        assert DashboardInfo.model_validate(get(api, "/v1/dashboard/info")).mlflow_ui_url == MLFLOW_UI


def test_rollouts_show_stage_decisions_and_live_evidence(
    tmp_path: Path, embodiment: EmbodimentSpec, registry: str
) -> None:
    make_registry(tmp_path)
    uri = registry
    settings = settings_for(
        tmp_path,
        f"sqlite:///{tmp_path / 'catalog.db'}",
        mlflow_tracking_uri=uri,
        rollout_check_interval_s=3600,  # no gate evaluation, no serving: the test drives every step
    )
    with running_api(settings, embodiment) as api:
        first = api.client.post("/v1/rollouts", json={"candidate": "2", "reason": "first try"}, headers=ADMIN)
        assert first.status_code == 201, first.text
        first_id = first.json()["rollout_id"]
        aborted = api.client.post(f"/v1/rollouts/{first_id}/abort", headers=ADMIN)
        assert aborted.status_code == 200, aborted.text
        assert api.client.post(f"/v1/rollouts/{first_id}/pause", headers=ADMIN).status_code == 409
        api.state.rollouts.registry.set("candidate", "2")  # abort dropped the alias; a retrain sets it again
        second = api.client.post(
            "/v1/rollouts", json={"candidate": "candidate", "reason": "second try"}, headers=ADMIN
        )
        assert second.status_code == 201, second.text
        second_id = second.json()["rollout_id"]

        robot = api.register_robot("robot-1")
        assigned = get(api, "/v1/robots/me/policy", robot)
        assert (assigned["version"], assigned["stage"]) == ("wamfleet-policy/1", "shadow")
        # The champion drives; the candidate is shadowed: what the robot's runner tags.
        shadowed = {
            "policy.requests": "10",
            "policy.errors": "0",
            "policy.latency_p95_ms": "35.5",
            "shadow.version": "wamfleet-policy/2",
            "shadow.requests": "10",
            "shadow.errors": "1",
            "shadow.action_mse": "0.25",
            "shadow.latency_p95_ms": "80",
        }
        for success in (True, False):
            record(
                api,
                robot,
                tmp_path,
                embodiment,
                robot_id="robot-1",
                success=success,
                source=EpisodeSource.autonomous,
                policy_version="wamfleet-policy/1",
                tags=shadowed,
            )
        paused = api.client.post(f"/v1/rollouts/{second_id}/pause", headers=ADMIN)
        assert paused.status_code == 200, paused.text

        views = [RolloutView.model_validate(v) for v in get(api, "/v1/dashboard/rollouts")]
        assert [v.rollout.rollout_id for v in views] == [second_id, first_id]  # newest first
        live, done = views
        assert (live.rollout.stage, live.rollout.paused, live.rollout.awaiting_approval) == (
            "shadow",
            True,
            False,
        )
        assert (live.rollout.candidate_version, live.rollout.champion_version) == ("2", "1")
        assert [(d.action, d.actor) for d in live.rollout.decisions] == [
            ("start", "admin"),
            ("pause", "admin"),
        ]
        assert live.evidence is not None
        assert live.evidence.stage == "shadow"
        champion = live.evidence.champion
        assert (champion.version, champion.episodes, champion.successes) == ("1", 2, 1)
        assert (champion.requests, champion.errors, champion.latency_p95_ms) == (20, 0, 35.5)
        assert live.evidence.candidate.episodes == 0
        shadow = live.evidence.shadow
        assert (shadow.episodes, shadow.requests, shadow.errors) == (2, 20, 2)
        assert (shadow.action_mse, shadow.latency_p95_ms) == (0.25, 80.0)

        assert done.rollout.stage == "aborted" and done.rollout.finished_at is not None
        assert done.evidence is None  # finished: its evidence is in its decisions
        assert [d.action for d in done.rollout.decisions] == ["start", "abort"]
        assert get(api, "/v1/dashboard/rollouts", limit=1)[0]["rollout"]["rollout_id"] == second_id

        robots = [RobotRow.model_validate(r) for r in get(api, "/v1/dashboard/robots")]
        assert [(r.assigned_version, r.assigned_stage, r.assigned_cohort) for r in robots] == [
            ("wamfleet-policy/1", "shadow", "champion")
        ]
        assert robots[0].assigned_at is not None
        assert get(api, "/v1/dashboard/info", bearer(ADMIN_TOKEN))["counts"]["rollouts"] == 2
