"""The flywheel `wamfleet demo` turns, step by step, on the embedded defaults.

MLflow's UI and the platform API start first; a diverse simulated fleet uploads episodes; a retrain
runs the continuous fine-tuning pipeline (kfp.local on local Ray) and registers version 1; version 1
is served and rolled out (no champion yet: the whole fleet is its canary) and the robots drive
under it, uploading every autonomous episode with its outcome; a second retrain on the grown
dataset resumes from the champion and registers version 2, which goes through shadow and canary
against version 1 and is promoted or rolled back on the robots' evidence. The report is read back
from the platform and MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wamfleet.fleet_agent.sim.fleet import FleetMode
from wamfleet.fleet_agent.sim.tasks import DEFAULT_TASKS
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.cli.common import fail
from wamfleet.platform.cli.demo_report import DemoReport, eval_text, write_report
from wamfleet.platform.cli.fleet_cmd import simulate_fleet
from wamfleet.platform.cli.mlflow_ui import start_mlflow_ui
from wamfleet.platform.contracts.ingest import EpisodeSummary
from wamfleet.platform.contracts.rollout import FINAL_STAGES, RolloutConfig, RolloutInfo, StartRollout
from wamfleet.platform.settings import Settings

if TYPE_CHECKING:
    from wamfleet.fleet_agent.sim.assigned import AssignedEpisode

DEMO_MARKER = ".wamfleet-demo"
ROLLOUT_EPISODE_CAP = 12  # per robot: a rollout that needs more evidence than this is reported as is


@dataclass(frozen=True)
class DemoProfile:
    """How big the demo is. `quick` fits 2 CPU cores in minutes; `gpu` is sized for one GPU."""

    name: str
    robots: int
    episodes_per_robot: int
    tasks: tuple[str, ...]
    image_size: int
    max_steps: int
    preset: str
    train_steps: int  # a new model's retrain
    resume_steps: int  # a retrain resuming from the champion: it starts from a policy that acts
    batch_size: int
    curation_workers: int  # Ray Data workers; 0: in-process (on 2 cores Ray Data only breaks even)
    train_threads: int  # CPUs the Ray Train worker reserves (capped at the machine's)
    use_gpu: bool
    eval_episodes: int
    rollout_episodes: int  # each robot drives at least this many episodes per rollout
    latency_budget_ms: float
    seed: int = 0


PROFILES = {
    "quick": DemoProfile(
        name="quick",
        # Sized so the policy acts (docs/efficacy.md): 10 expert episodes per task, the tiny WAM at
        # 64 px, 600 steps of batch 16 on a cosine schedule; 5 held-out layouts per task and version.
        robots=4,
        episodes_per_robot=5,
        tasks=DEFAULT_TASKS,
        image_size=64,
        max_steps=150,
        preset="tiny",
        train_steps=600,
        resume_steps=200,
        batch_size=16,
        curation_workers=0,
        train_threads=2,
        use_gpu=False,
        eval_episodes=5,
        rollout_episodes=2,
        latency_budget_ms=30_000,  # CPU policy servers share two cores with the robots
    ),
    "smoke": DemoProfile(
        name="smoke",
        # Every step of the flywheel on the smallest fleet, in minutes: checks an install and is the
        # suite's end-to-end test. 30 training steps do not make a policy that acts (quick does).
        robots=2,
        episodes_per_robot=2,
        tasks=("reach-v3", "push-v3"),
        image_size=64,
        max_steps=80,
        preset="tiny",
        train_steps=30,
        resume_steps=10,
        batch_size=8,
        curation_workers=0,
        train_threads=2,
        use_gpu=False,
        eval_episodes=2,
        rollout_episodes=1,
        latency_budget_ms=30_000,
    ),
    "gpu": DemoProfile(
        name="gpu",
        robots=6,
        episodes_per_robot=8,
        tasks=("reach-v3", "push-v3", "drawer-open-v3", "door-open-v3"),
        image_size=128,
        max_steps=150,
        preset="small",
        train_steps=3000,
        resume_steps=1000,
        batch_size=32,
        curation_workers=4,
        train_threads=4,
        use_gpu=True,
        eval_episodes=3,
        rollout_episodes=4,
        latency_budget_ms=1000,
    ),
}


@dataclass
class RetrainResult:
    run_id: str
    version: str
    candidate: bool
    parent: str
    seconds: float


@dataclass
class RolloutResult:
    info: RolloutInfo
    episodes: list[AssignedEpisode]
    seconds: float


@dataclass
class DemoSummary:
    profile: DemoProfile
    data_dir: Path
    api_url: str = ""
    mlflow_url: str = ""
    episodes: list[EpisodeSummary] = field(default_factory=list)
    frames_read_back: int = 0
    retrains: list[RetrainResult] = field(default_factory=list)
    rollouts: list[RolloutResult] = field(default_factory=list)
    report_path: Path | None = None
    report: DemoReport | None = None
    seconds: float = 0.0

    @property
    def dashboard_url(self) -> str:
        return f"{self.api_url}/dashboard"

    @property
    def lerobot_dir(self) -> Path:
        return self.data_dir / "lerobot"


def prepare_data_dir(path: Path) -> None:
    """Starts empty; only a directory a previous demo made (it holds the marker) is wiped."""
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            fail(
                f"data dir {path} is not empty and was not made by `wamfleet demo`; choose another --data-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / DEMO_MARKER).write_text("made by wamfleet demo; deleted and recreated by the next run\n")


def _columns() -> tuple[TextColumn | BarColumn | MofNCompleteColumn | TimeElapsedColumn, ...]:
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def run_demo(settings: Settings, profile: DemoProfile, console: Console, keep_serving: bool) -> DemoSummary:
    started = time.monotonic()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls of the policy servers
    prepare_data_dir(settings.data_dir)
    log_file = settings.data_dir / "logs" / "demo.log"
    console.print(f"log: {log_file}")
    with logs_in_file(log_file):
        return _run(settings, profile, console, keep_serving, started)


@contextmanager
def logs_in_file(path: Path) -> Iterator[None]:
    """Log records and warnings go to the demo's log file, not between its progress bars: the CLI's
    root handler writes INFO to stderr (alembic's migrations, the rollout controller, MLflow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    previous = root.handlers[:]
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers = previous
        handler.close()


def _run(
    settings: Settings, profile: DemoProfile, console: Console, keep_serving: bool, started: float
) -> DemoSummary:
    from wamfleet.platform.api.app import create_app
    from wamfleet.platform.api.server import serve_in_thread

    admin_token = secrets.token_urlsafe(24)
    ui = start_mlflow_ui(settings)
    settings = settings.model_copy(
        update={
            "admin_token": SecretStr(admin_token),
            "catalog_url": None,
            "storage_backend": "local",
            "mlflow_tracking_uri": None,
            "mlflow_ui_url": ui.url,
            "rollout_backend": "local",
            "rollout_check_interval_s": 1.0,
        }
    )
    summary = DemoSummary(profile=profile, data_dir=settings.data_dir, mlflow_url=ui.url)
    app = create_app(settings)
    try:
        with serve_in_thread(app) as api_url:
            summary.api_url = api_url
            console.print(f"platform API on {api_url} (SQLite catalog, local object store)")
            console.print(f"dashboard: {summary.dashboard_url}   MLflow UI: {ui.url} (starting)")
            admin = AdminClient(api_url, admin_token)
            try:
                _turn(summary, settings, profile, admin, console)
                if not ui.ready(timeout_s=60):
                    console.print(f"[yellow]the MLflow UI did not come up; its log: {ui.log}[/yellow]")
                summary.seconds = time.monotonic() - started
                step(console, 6, "report, read back from the platform and MLflow")
                summary.report_path, summary.report = write_report(
                    admin, settings, profile.name, summary.dashboard_url, ui.url
                )
                print_summary(summary, console)
                if keep_serving:
                    console.print(
                        f"\nserving the dashboard ({summary.dashboard_url}, admin token {admin_token}) "
                        f"and the MLflow UI ({ui.url}); Ctrl-C stops them"
                    )
                    _wait_for_interrupt()
            finally:
                admin.close()
    finally:
        app.state.platform.rollouts.backend.stop_all()  # the demo's policy servers end with it
        ui.stop()
    return summary


def step(console: Console, number: int, title: str) -> None:
    console.rule(f"[bold]{number}/6 {title}")


def _turn(
    summary: DemoSummary, settings: Settings, profile: DemoProfile, admin: AdminClient, console: Console
) -> None:
    step(console, 1, "a diverse simulated fleet records and uploads episodes")
    simulate_fleet(
        summary.api_url,
        admin.token,
        robots=profile.robots,
        episodes=profile.episodes_per_robot,
        tasks=profile.tasks,
        mode=FleetMode.diverse,
        spool_root=summary.data_dir / "spool",
        seed=profile.seed,
        image_size=profile.image_size,
        max_steps=profile.max_steps,
        console=console,
    )
    summary.episodes = admin.all_episodes()
    read_back_and_export(summary, profile, admin, console)

    step(console, 2, "retrain: the continuous fine-tuning pipeline registers version 1")
    first = retrain(summary, settings, profile, admin, console, parent="none", reason="demo: first policy")

    step(console, 3, f"roll out version {first.version}; the fleet drives under it and uploads")
    roll_out(
        summary,
        profile,
        admin,
        console,
        first.version,
        # No champion yet: the whole fleet is the canary, judged on its own (success floor 0,
        # latency and error bounds), then it goes full and completes as the first champion.
        RolloutConfig(
            canary_percent=100,
            canary_min_episodes=profile.robots,
            full_min_episodes=profile.robots,
            latency_p95_budget_ms=profile.latency_budget_ms,
        ),
    )

    step(console, 4, "retrain on the grown dataset, resuming from the champion: version 2")
    second = retrain(
        summary, settings, profile, admin, console, parent="champion", reason="demo: the fleet's own episodes"
    )

    if not second.candidate:
        # The pipeline's evaluation (candidate against champion on the same held-out layouts) is
        # what admits a version to the fleet: a version that failed it never reaches a robot.
        step(console, 5, f"version {second.version} failed its evaluation gate: it is not rolled out")
        console.print(f"version {first.version} stays champion")
        return
    step(console, 5, f"version {second.version} against the champion: shadow, then canary")
    roll_out(
        summary,
        profile,
        admin,
        console,
        second.version,
        RolloutConfig(
            shadow=True,
            shadow_percent=100,
            shadow_min_episodes=profile.robots,
            # A retrained policy is meant to act differently; the shadow stage here guards errors
            # and latency, and any action at all (Meta-World actions lie in [-1, 1]: MSE <= 4).
            shadow_max_action_mse=4.0,
            canary_percent=50,
            canary_min_episodes=2 * profile.rollout_episodes,
            # Reachable by a one-robot canary within its ROLLOUT_EPISODE_CAP (a few episodes go to
            # the shadow stage first), so an undecided canary ends rolled back as inconclusive
            # instead of still running when the robots stop.
            canary_max_episodes=max(2 * profile.rollout_episodes, ROLLOUT_EPISODE_CAP // 2),
            full_min_episodes=profile.robots,
            success_margin=0.25,
            latency_p95_budget_ms=profile.latency_budget_ms,
        ),
    )


def read_back_and_export(
    summary: DemoSummary, profile: DemoProfile, admin: AdminClient, console: Console
) -> None:
    """Downloads every episode through its signed URLs, verifies it, exports LeRobot v3."""
    from wamfleet.fleet_agent.episode_reader import EpisodeReader
    from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
    from wamfleet.pipelines.lerobot_export import export_lerobot

    with Progress(*_columns(), console=console) as progress, tempfile.TemporaryDirectory() as tmp:
        readback = progress.add_task("downloading + verifying", total=len(summary.episodes))
        dirs = []
        for episode in summary.episodes:
            directory = Path(tmp) / str(episode.episode_id)
            admin.download_episode(episode.episode_id, directory)
            with EpisodeReader(directory) as reader:
                summary.frames_read_back += sum(1 for _ in reader.iter_frames())
            dirs.append(directory)
            progress.advance(readback)
        export = progress.add_task("exporting LeRobot v3 dataset", total=1)
        export_lerobot(dirs, summary.lerobot_dir, sawyer_embodiment(profile.image_size))
        progress.advance(export)


def retrain(
    summary: DemoSummary,
    settings: Settings,
    profile: DemoProfile,
    admin: AdminClient,
    console: Console,
    parent: str,
    reason: str,
) -> RetrainResult:
    """Records a manual retrain in the catalog (as POST /v1/retrains would) and runs its pipeline
    here with kfp.local, so its progress and errors show in this terminal."""
    from wamfleet.pipelines.pipeline import STEPS
    from wamfleet.pipelines.run import run_recorded
    from wamfleet.platform.catalog import retrains
    from wamfleet.platform.catalog.db import Catalog
    from wamfleet.platform.contracts.retrain import RetrainParams

    params = RetrainParams(
        parent=parent,
        preset=profile.preset,
        steps=profile.train_steps if parent == "none" else profile.resume_steps,
        batch_size=profile.batch_size,
        curation_workers=profile.curation_workers,
        threads_per_worker=max(1, min(profile.train_threads, os.cpu_count() or 1)),
        use_gpu=profile.use_gpu,
        seed=profile.seed,
        eval_episodes=profile.eval_episodes,
        eval_max_steps=profile.max_steps,
    )
    catalog = Catalog(settings.effective_catalog_url)
    started = time.monotonic()
    try:
        with catalog.session() as session:
            run = retrains.create_run(
                session, trigger="manual", reason=reason, requested_by="demo", backend="local", params=params
            )
        console.print(f"retrain {run.run_id} (parent: {parent}): {', '.join(STEPS)}")
        log_path = settings.data_dir / "logs" / f"retrain-{run.run_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        console.print(f"its steps' output: {log_path}")
        with (
            Progress(*_columns(), console=console) as progress,
            open(log_path, "w") as log,
            contextlib.redirect_stdout(log),  # kfp.local prints every step's output
            contextlib.redirect_stderr(log),
        ):
            bar = progress.add_task("pipeline (kfp.local, local Ray): starting", total=len(STEPS))

            def on_step(name: str) -> None:
                if name in STEPS:
                    progress.update(bar, completed=STEPS.index(name), description=f"pipeline step: {name}")

            result = run_recorded(settings, catalog, params, run.run_id, on_step)
            progress.update(bar, completed=len(STEPS), description="pipeline: done")
    finally:
        catalog.dispose()
    outcome = RetrainResult(
        run_id=run.run_id,
        version=result.version,
        candidate=result.candidate,
        parent=parent,
        seconds=time.monotonic() - started,
    )
    console.print(f"registered {settings.registered_model}/{result.version} in {outcome.seconds:.0f} s")
    verdict = "passed: alias candidate" if result.candidate else "failed: no candidate alias"
    console.print(f"evaluation gate {verdict}; {gate_reason(settings, result.version)}")
    summary.retrains.append(outcome)
    return outcome


def gate_reason(settings: Settings, version: str) -> str:
    """What the register step wrote on the version: closed-loop success on held-out layouts
    against the champion's on the same layouts (or the offline error when nothing drove)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.effective_mlflow_uri)
    description = client.get_model_version(settings.registered_model, version).description or ""
    return description.removeprefix("gate: ") or "no reason recorded"


def roll_out(
    summary: DemoSummary,
    profile: DemoProfile,
    admin: AdminClient,
    console: Console,
    version: str,
    config: RolloutConfig,
) -> RolloutResult:
    """Starts a rollout; every robot asks for its assignment before each episode and drives it
    until the rollout ends (or ROLLOUT_EPISODE_CAP); returns the rollout as the platform left it."""
    from wamfleet.fleet_agent.sim.assigned import AssignedRobotPlan, run_assigned_fleet

    started = time.monotonic()
    info = admin.start_rollout(StartRollout(candidate=version, config=config, reason="wamfleet demo"))
    console.print(
        f"rollout {info.rollout_id}: version {version} against "
        f"{info.champion_version or 'no champion'} starts in {info.stage}"
    )
    plans = [
        AssignedRobotPlan(
            robot_id,
            summary.api_url,
            admin.robot_token(robot_id, "sawyer-metaworld", site="sim"),
            profile.tasks,
            profile.rollout_episodes,
            seed=profile.seed + len(summary.rollouts) + 1,
            image_size=profile.image_size,
            max_steps=profile.max_steps,
            until_rollout_ends=ROLLOUT_EPISODE_CAP,
        )
        for robot_id in [f"sim-{k + 1}" for k in range(profile.robots)]
    ]
    episodes: list[AssignedEpisode] = []
    with Progress(*_columns(), console=console) as progress:
        task = progress.add_task(f"robots driving (stage {info.stage})", total=None)
        for episode in run_assigned_fleet(plans, summary.data_dir / "spool-autonomous"):
            episodes.append(episode)
            progress.update(
                task,
                advance=1,
                description=f"robots driving (last: {episode.robot_id} ran {episode.assigned_version} "
                f"in {episode.stage})",
            )
    deadline = time.monotonic() + 60
    while True:
        info = admin.rollout(info.rollout_id)
        if info.stage in FINAL_STAGES or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    result = RolloutResult(info=info, episodes=episodes, seconds=time.monotonic() - started)
    for decision in info.decisions:
        console.print(
            f"  {decision.action}: {decision.from_stage} -> {decision.to_stage} ({decision.reason})"
        )
    console.print(f"rollout of version {version} ended in stage {info.stage} after {result.seconds:.0f} s")
    summary.rollouts.append(result)
    return result


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_summary(summary: DemoSummary, console: Console) -> None:
    from rich.table import Table

    report = summary.report
    assert report is not None
    versions = Table(title="policy versions")
    for column in ("version", "parent", "aliases", "evaluation success", "fleet success", "latency p95"):
        versions.add_column(column)
    for v in report.versions:
        versions.add_row(
            f"{report.model_name}/{v.version}",
            v.parent or "none",
            ", ".join(v.aliases) or "-",
            eval_text(v),
            f"{v.fleet_successes}/{v.fleet_episodes}",
            "-" if v.latency_p95_ms is None else f"{v.latency_p95_ms:.0f} ms",
        )
    console.print(versions)
    # Each decision was printed once, when its rollout ended; here only where each rollout ended.
    rollouts = Table(title="rollouts")
    for column in ("version", "against", "decisions", "final stage"):
        rollouts.add_column(column)
    for r in report.rollouts:
        rollouts.add_row(
            r.candidate_version, r.champion_version or "no champion", str(len(r.decisions)), r.final_stage
        )
    console.print(rollouts)
    console.print(
        f"{report.episodes} episodes in the catalog ({report.autonomous_episodes} autonomous); "
        f"{summary.frames_read_back} frames of the fleet's first {len(summary.episodes)} episodes "
        "downloaded and verified"
    )
    console.print(f"report: {summary.report_path}")
    console.print(f"dashboard: {summary.dashboard_url}")
    console.print(f"MLflow UI: {summary.mlflow_url}")
    console.print(f"LeRobot v3 dataset: {summary.lerobot_dir}")
    console.print(f"the whole demo took {summary.seconds / 60:.1f} min")
