"""The fleet dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The platform runs under uvicorn on 127.0.0.1, filled by a short simulated run (two Meta-World
robots, one episode each, uploaded through the API as real robots do). Retrains go through the
platform's LocalLauncher with a small runner in place of `wamfleet retrain`: it freezes a real
snapshot, validates and curates it (the pipeline's first three steps, in-process) and records
the outcome, skipping fine-tuning. Version 1 is registered in a real MLflow (SQLite) with the
lineage tags the pipeline's register step writes, and a rollout of it is started through the API.

The browser then plays an episode's H.264 video from its signed object-store URL, checks that the
page is read-only without the token, signs in, triggers a retrain and pauses the rollout, and
writes screenshots to $WAMFLEET_TEST_ARTIFACTS (default build/test-artifacts/).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from tests.conftest import ADMIN, ADMIN_TOKEN, MakeMlflowStore
from tests.integration.api_support import settings_for
from wamfleet.fleet_agent.sim.fleet import FleetMode
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.cli.fleet_cmd import simulate_fleet
from wamfleet.platform.retrains.launcher import LocalLauncher
from wamfleet.platform.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
MLFLOW_UI = "http://127.0.0.1:5000"
VIEWPORT = {"width": 1280, "height": 800}

# Stands in for `wamfleet retrain --run-id ID`: the real snapshot, validation and curation of the
# run's own params, then the outcome in the catalog; no fine-tuning, so no model version.
CURATING_RUNNER = """
import sys
from wamfleet.pipelines.curate import curate, save_curated
from wamfleet.pipelines.snapshot import freeze_snapshot
from wamfleet.pipelines.validate import validate_snapshot
from wamfleet.platform.catalog import retrains
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.contracts.retrain import RetrainParams
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import open_object_store

run_id = sys.argv[sys.argv.index("--run-id") + 1]
settings = Settings()
catalog = Catalog(settings.effective_catalog_url, run_migrations=False)
store = open_object_store(settings)
with catalog.session() as s:
    params = RetrainParams.model_validate(retrains.mark_running(s, run_id).params)
snapshot = freeze_snapshot(catalog, store, params.snapshot)
report = validate_snapshot(catalog, store, snapshot)
ok = [c.episode_id for c in report.results if c.status == "ok"]
dataset = curate(snapshot, ok, settings, params.recipe, workers=0)
save_curated(store, dataset)
print("curated", dataset.dataset_hash, dataset.report.kept, "of", dataset.report.episodes_in)
with catalog.session() as s:
    retrains.mark_finished(
        s, run_id, succeeded=True, snapshot_hash=snapshot.snapshot_hash, dataset_hash=dataset.dataset_hash
    )
catalog.dispose()
"""


def artifacts_dir() -> Path:
    configured = os.environ.get("WAMFLEET_TEST_ARTIFACTS")
    directory = Path(configured) if configured else REPO / "build" / "test-artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def require_chromium() -> None:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard browser test drives Debian's chromium "
            "(install it with `apt-get install chromium`); Playwright's own browsers are not used"
        )


@contextmanager
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def wait_retrain(api: httpx.Client, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run: dict[str, Any] = api.get(f"/v1/retrains/{run_id}").json()
        if run["status"] in ("succeeded", "failed"):
            return run
        assert time.monotonic() < deadline, f"retrain {run_id} still {run['status']}"
        time.sleep(0.2)


def register_version(settings: Settings, run: dict[str, Any]) -> None:
    """Version 1 as the register step records it: run metrics, lineage tags, the candidate alias."""
    from mlflow import MlflowClient

    uri = settings.effective_mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(
        "wamfleet-retrain", artifact_location=str(settings.data_dir / "mlartifacts")
    )
    mlflow_run = client.create_run(experiment, run_name=f"retrain-{run['run_id']}")
    run_id = mlflow_run.info.run_id
    for key, value in {
        "train_loss": 0.412,
        "eval_success_rate": 0.5,
        "eval_offline_action_mse": 0.0831,
        "gate_passed": 1.0,
    }.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)
    name = settings.registered_model
    client.create_registered_model(name)
    tags = {
        "wamfleet.snapshot": run["snapshot_hash"],
        "wamfleet.dataset": run["dataset_hash"],
        "wamfleet.retrain_run": run["run_id"],
        "wamfleet.parent_version": "none",
        "wamfleet.code_version": "0.1.0",
        "wamfleet.gate": "passed",
    }
    version = client.create_model_version(name, source=f"runs:/{run_id}/policy", run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, "candidate", str(version.version))


@dataclass
class Filled:
    url: str
    api: httpx.Client
    first_run: dict[str, Any]
    rollout_id: str


@contextmanager
def filled_platform(tmp_path: Path, mlflow_store: MakeMlflowStore) -> Iterator[Filled]:
    settings = settings_for(
        tmp_path,
        f"sqlite:///{tmp_path / 'catalog.db'}",
        mlflow_tracking_uri=mlflow_store(tmp_path / "mlflow.db"),  # a copy of the migrated empty store
        mlflow_ui_url=MLFLOW_UI,
        rollout_check_interval_s=3600,  # the rollout is looked at, never served, in this test
    )
    launcher = LocalLauncher(settings, command=[sys.executable, "-c", CURATING_RUNNER])
    with (
        serve_in_thread(create_app(settings, launcher=launcher)) as url,
        httpx.Client(base_url=url, headers=ADMIN, timeout=30) as api,
    ):
        fleet = simulate_fleet(
            url,
            ADMIN_TOKEN,
            robots=2,
            episodes=1,
            tasks=("reach-v3", "push-v3"),
            mode=FleetMode.diverse,
            spool_root=tmp_path / "spools",
            image_size=64,
            max_steps=80,
            console=Console(file=io.StringIO()),
        )
        assert fleet.uploaded == 2

        response = api.post(
            "/v1/retrains",
            json={"reason": "first episodes of the sim fleet", "params": {"recipe": {"min_frames": 8}}},
        )
        assert response.status_code == 201, response.text
        first = wait_retrain(api, response.json()["run_id"])
        assert first["status"] == "succeeded", first["error"]
        register_version(settings, first)

        rollout = api.post(
            "/v1/rollouts",
            json={
                "candidate": "1",
                "reason": "first policy for the sim fleet",
                "config": {"canary_percent": 50, "require_approval": True},
            },
        )
        assert rollout.status_code == 201, rollout.text
        for robot_id in ("sim-1", "sim-2"):  # robots ask for their policy between episodes
            token = api.post(f"/v1/robots/{robot_id}/token").json()["token"]
            policy = httpx.get(f"{url}/v1/robots/me/policy", headers={"Authorization": f"Bearer {token}"})
            assert policy.status_code == 200, policy.text
        yield Filled(url, api, first, rollout.json()["rollout_id"])


def video_states(page: Any) -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = page.locator("[data-testid=episode-video]").evaluate_all(
        "vs => vs.map(v => ({camera: v.dataset.camera, ready: v.readyState, time: v.currentTime, "
        "played: v.played.length, error: v.error && v.error.message, width: v.videoWidth}))"
    )
    return states


def test_dashboard_in_chromium(tmp_path: Path, mlflow_store: MakeMlflowStore) -> None:
    require_chromium()
    shots = artifacts_dir()
    with filled_platform(tmp_path, mlflow_store) as filled, browser_page() as page:
        page.goto(f"{filled.url}/dashboard")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector("#tab-overview[data-loaded=true]")
        assert page.text_content("[data-testid=viewer]") == "read-only"
        assert page.text_content("[data-testid=count-robots] .value") == "2"
        assert page.text_content("[data-testid=count-episodes] .value") == "2"

        # Robots: both, seen, each told what to run by the rollout.
        page.click("#tabs a[data-tab=robots]")
        rows = page.locator("#tab-robots [data-testid=robot-row]")
        rows.first.wait_for()
        assert rows.count() == 2
        assert "never" not in rows.all_inner_texts()[0]
        assigned = page.locator("#tab-robots [data-testid=robot-row]", has_text="wamfleet-policy/1")
        assert assigned.count() >= 1
        page.click("#tab-robots [data-testid=robot-row][data-robot-id=sim-2] a")  # its episodes
        page.wait_for_function(
            "(() => { const rows = document.querySelectorAll('#tab-episodes [data-testid=episode-row]');"
            " return rows.length === 1 && rows[0].innerText.includes('sim-2'); })()"
        )
        assert page.input_value("#q-robot") == "sim-2"

        # Episodes: search, then open one and play its video from the signed URL.
        page.click("#episode-search-clear")
        page.wait_for_function(
            "document.querySelectorAll('#tab-episodes [data-testid=episode-row]').length === 2"
        )
        page.select_option("#q-source", "autonomous")
        page.click("#episode-search-submit")
        page.wait_for_selector("#episodes-table .empty")
        page.click("#episode-search-clear")
        page.fill("#q-task", "reach")
        page.click("#episode-search-submit")
        page.wait_for_function(
            "document.querySelectorAll('#tab-episodes [data-testid=episode-row]').length === 1"
        )
        page.locator("#tab-episodes [data-testid=episode-row]").first.click()
        page.wait_for_selector("[data-testid=episode-detail] video")
        assert "reach" in (page.text_content("[data-testid=episode-instruction]") or "").lower()
        assert page.locator("[data-testid=episode-video]").count() == 2  # one per camera
        page.wait_for_function(  # HAVE_CURRENT_DATA: a frame is decoded
            "[...document.querySelectorAll('[data-testid=episode-video]')].every(v => v.readyState >= 2)"
        )
        page.click("[data-testid=play-all]")
        page.wait_for_function(
            "[...document.querySelectorAll('[data-testid=episode-video]')]"
            ".every(v => v.currentTime > 0.3 && v.played.length > 0)"
        )
        for played in video_states(page):
            assert played["error"] is None and played["width"] == 64, played
        page.screenshot(path=str(shots / "dashboard-episode.png"), full_page=True)
        with page.expect_download() as download_info:  # the episode as MCAP, for Foxglove
            page.click("[data-testid=download-mcap]")
        download = download_info.value
        assert download.suggested_filename.endswith(".mcap")
        mcap_path = download.path()
        assert mcap_path is not None and Path(mcap_path).read_bytes()[:8] == b"\x89MCAP0\r\n"

        # Without the token nothing can be changed.
        page.click("#tabs a[data-tab=retrains]")
        page.locator("#tab-retrains [data-testid=retrain-row]").first.wait_for()
        assert page.is_disabled("[data-testid=trigger-retrain]")
        assert page.is_visible("#tab-retrains .readonly-hint")
        page.click("#tabs a[data-tab=rollouts]")
        page.locator("[data-testid=rollout]").first.wait_for()
        for action in ("approve", "pause", "abort"):
            assert page.is_disabled(f"[data-testid=rollout-{action}]"), action

        # A wrong token is refused and leaves the page read-only.
        page.fill("[data-testid=token-input]", "not-the-admin-token")
        page.click("[data-testid=signin]")
        page.wait_for_selector(".message.error")
        assert "refused" in (page.text_content("[data-testid=message]") or "")
        assert page.text_content("[data-testid=viewer]") == "read-only"

        # Signed in: trigger a retrain from the page.
        page.fill("[data-testid=token-input]", ADMIN_TOKEN)
        page.click("[data-testid=signin]")
        page.wait_for_function("document.getElementById('viewer').textContent === 'admin'")
        page.click("#tabs a[data-tab=retrains]")
        page.wait_for_selector("[data-testid=trigger-retrain]:enabled")
        assert not page.is_visible("#tab-retrains .readonly-hint")
        page.fill("[data-testid=retrain-reason]", "asked for in the browser test")
        page.click("[data-testid=trigger-retrain]")
        new_row = page.locator(
            "#tab-retrains [data-testid=retrain-row]", has_text="asked for in the browser test"
        )
        new_row.wait_for()
        assert page.locator("#tab-retrains [data-testid=retrain-row]").count() == 2
        runs = filled.api.get("/v1/retrains").json()
        mine = [r for r in runs if r["reason"] == "asked for in the browser test"]
        assert len(mine) == 1 and mine[0]["requested_by"] == "admin" and mine[0]["trigger"] == "manual"
        second = wait_retrain(filled.api, mine[0]["run_id"])
        assert second["status"] == "succeeded", second["error"]
        page.screenshot(path=str(shots / "dashboard-retrains.png"), full_page=True)

        # The admin acts on the rollout: pause it; the decision is recorded with its actor.
        page.click("#tabs a[data-tab=rollouts]")
        page.click("[data-testid=rollout-pause]")
        page.wait_for_selector("[data-testid=rollout] .badge:text-is('paused')")
        info = filled.api.get(f"/v1/rollouts/{filled.rollout_id}").json()
        assert info["paused"] is True
        assert [d["action"] for d in info["decisions"]] == ["start", "pause"]
        assert page.is_enabled("[data-testid=rollout-resume]")
        assert page.is_disabled("[data-testid=rollout-pause]")
        page.screenshot(path=str(shots / "dashboard-rollouts.png"), full_page=True)

        # The token survives a reload (sessionStorage); both curations show their funnel.
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.text_content("[data-testid=viewer]") == "admin"
        page.click("#tabs a[data-tab=datasets]")
        page.locator("[data-testid=curation-report]").first.wait_for()
        assert page.locator("[data-testid=dataset]").count() == 1  # same episodes, same snapshot
        assert page.locator("[data-testid=curation-report]").count() == 2
        page.screenshot(path=str(shots / "dashboard-datasets.png"), full_page=True)

        page.click("#tabs a[data-tab=models]")
        version = page.locator("[data-testid=model-row][data-version='1']")
        version.wait_for()
        assert "candidate" in version.inner_text()
        assert version.locator("a").first.get_attribute("href") == (
            f"{MLFLOW_UI}/#/models/wamfleet-policy/versions/1"
        )
        page.screenshot(path=str(shots / "dashboard-models.png"), full_page=True)

        page.click("#tabs a[data-tab=overview]")
        page.wait_for_selector("#overview-episodes [data-testid=episode-row]")
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    assert (shots / "dashboard.png").stat().st_size > 10_000


def test_locked_dashboard_asks_for_the_token(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", dashboard_anonymous_read=False)
    with serve_in_thread(create_app(settings)) as url, browser_page() as page:
        page.goto(f"{url}/dashboard")
        page.wait_for_selector("body[data-ready=true]")
        assert page.is_visible("[data-testid=locked]")
        assert not page.is_visible("#main")
        page.fill("[data-testid=token-input]", ADMIN_TOKEN)
        page.click("[data-testid=signin]")
        page.wait_for_selector("#tab-overview[data-loaded=true]")
        assert not page.is_visible("[data-testid=locked]")
        assert page.text_content("[data-testid=viewer]") == "admin"
        assert page.text_content("[data-testid=count-robots] .value") == "0"
