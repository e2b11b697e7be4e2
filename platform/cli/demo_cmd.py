"""`wamfleet demo`: the flywheel on the embedded defaults, from an empty data dir.

At this stage: the platform API starts (SQLite catalog, local object store); simulated robots
register, record and upload episodes through their agents; the catalog's view of what
arrived is printed; every episode is downloaded through its signed URLs, verified, exported
as a LeRobot v3 dataset; a retrain runs the continuous fine-tuning pipeline (kfp.local, local
Ray: snapshot, validate, curate, shards, finetune, evaluate, register) and registers version 1
of a tiny World Action Model in MLflow; that version is served (KServe v2 + openpi websocket)
and drives a robot on every task, whose autonomous episodes are uploaded like any other.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wamfleet.fleet_agent.sim.fleet import FleetMode
from wamfleet.fleet_agent.sim.tasks import DEFAULT_TASKS
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.cli.common import fail, load_settings
from wamfleet.platform.cli.fleet_cmd import parse_tasks, simulate_fleet
from wamfleet.platform.contracts.ingest import EpisodeSummary
from wamfleet.platform.contracts.rollout import RolloutInfo
from wamfleet.platform.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

DEMO_MARKER = ".wamfleet-demo"


@dataclass
class DemoOptions:
    robots: int = 2
    episodes_per_robot: int = 3
    tasks: tuple[str, ...] = DEFAULT_TASKS
    image_size: int = 96
    seed: int = 0
    max_steps: int = 150
    train_steps: int = 150
    rollout_episodes: int = 2


@dataclass
class DrivenEpisode:
    task: str
    success: bool
    progress: float
    policy_version: str
    requests: int
    latency_p50_ms: float


@dataclass
class DemoSummary:
    data_dir: Path
    lerobot_dir: Path
    api_url: str = ""
    episodes: list[EpisodeSummary] = field(default_factory=list)
    frames_read_back: int = 0
    model_uri: str | None = None
    policy_version: str = ""
    candidate: bool = False
    retrain_run_id: str = ""
    train_losses: list[float] = field(default_factory=list)
    driven: list[DrivenEpisode] = field(default_factory=list)
    autonomous_committed: int = 0
    rollout_id: str = ""
    rollout: RolloutInfo | None = None

    @property
    def frames(self) -> int:
        return sum(e.num_frames for e in self.episodes)

    @property
    def bytes(self) -> int:
        return sum(e.total_bytes for e in self.episodes)


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


def run_demo(settings: Settings, options: DemoOptions, console: Console) -> DemoSummary:
    from wamfleet.platform.api.app import create_app

    data_dir = settings.data_dir
    prepare_data_dir(data_dir)
    admin_token = secrets.token_urlsafe(24)
    settings = settings.model_copy(
        update={"admin_token": SecretStr(admin_token), "catalog_url": None, "rollout_check_interval_s": 1.0}
    )
    summary = DemoSummary(data_dir=data_dir, lerobot_dir=data_dir / "lerobot")
    app = create_app(settings)
    try:
        return _run(app, settings, options, console, summary, admin_token)
    finally:
        app.state.platform.rollouts.backend.stop_all()  # the demo's policy servers end with it


def _run(
    app: FastAPI,
    settings: Settings,
    options: DemoOptions,
    console: Console,
    summary: DemoSummary,
    admin_token: str,
) -> DemoSummary:
    from wamfleet.fleet_agent.episode_io import EpisodeReader
    from wamfleet.fleet_agent.sim.metaworld_robot import sawyer_embodiment
    from wamfleet.pipelines.lerobot_v3 import export_lerobot
    from wamfleet.platform.api.server import serve_in_thread

    data_dir = settings.data_dir
    with serve_in_thread(app) as api_url:
        summary.api_url = api_url
        console.print(f"platform API on {api_url} (SQLite catalog, {settings.storage_backend} object store)")
        simulate_fleet(
            api_url,
            admin_token,
            robots=options.robots,
            episodes=options.episodes_per_robot,
            tasks=options.tasks,
            mode=FleetMode.diverse,
            spool_root=data_dir / "spool",
            seed=options.seed,
            image_size=options.image_size,
            max_steps=options.max_steps,
            console=console,
        )
        admin = AdminClient(api_url, admin_token)
        try:
            summary.episodes = admin.all_episodes()
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as progress, tempfile.TemporaryDirectory() as tmp:
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
                export_lerobot(dirs, summary.lerobot_dir, sawyer_embodiment(options.image_size))
                progress.advance(export)
            retrain_demo_policy(summary, settings, options, admin, console)
            roll_out_and_drive(summary, options, admin, api_url, console)
        finally:
            admin.close()
    return summary


def retrain_demo_policy(
    summary: DemoSummary, settings: Settings, options: DemoOptions, admin: AdminClient, console: Console
) -> None:
    """Asks the platform for a retrain (recorded in the catalog) and runs its pipeline here."""
    from mlflow import MlflowClient

    from wamfleet.pipelines.registry import configure_mlflow
    from wamfleet.pipelines.run import run_local
    from wamfleet.platform.catalog import retrains
    from wamfleet.platform.catalog.db import Catalog
    from wamfleet.platform.contracts.retrain import RetrainParams

    params = RetrainParams(
        steps=options.train_steps,
        seed=options.seed,
        eval_episodes=1,
        eval_max_steps=options.max_steps,
        parent="none",
    )
    catalog = Catalog(settings.effective_catalog_url)
    try:
        with catalog.session() as session:
            run = retrains.create_run(
                session,
                trigger="manual",
                reason="wamfleet demo",
                requested_by="demo",
                backend="local",
                params=params,
            )
            retrains.mark_running(session, run.run_id)
        summary.retrain_run_id = run.run_id
        console.print(
            f"retrain {run.run_id}: snapshot, validate, curate, shards, finetune, evaluate, register"
        )
        with console.status("running the continuous fine-tuning pipeline (kfp.local, local Ray)"):
            try:
                result = run_local(settings, params, run.run_id)
            except Exception as exc:
                with catalog.session() as session:
                    retrains.mark_finished(session, run.run_id, succeeded=False, error=str(exc)[-4000:])
                raise
    finally:
        catalog.dispose()
    summary.policy_version = f"{settings.registered_model}/{result.version}"
    summary.model_uri = f"models:/{settings.registered_model}/{result.version}"
    summary.candidate = result.candidate
    configure_mlflow(settings)
    client = MlflowClient()
    version = client.get_model_version(settings.registered_model, result.version)
    history = client.get_metric_history(str(version.run_id), "train_loss")
    summary.train_losses = [m.value for m in sorted(history, key=lambda m: m.step)]


def roll_out_and_drive(
    summary: DemoSummary, options: DemoOptions, admin: AdminClient, api_url: str, console: Console
) -> None:
    """Rolls the new version out to the simulated fleet; robots drive whatever they are assigned."""
    from wamfleet.fleet_agent.sim.assigned import AssignedRobotPlan, run_assigned_fleet
    from wamfleet.platform.contracts.rollout import RolloutConfig, StartRollout

    assert summary.model_uri is not None
    version = summary.policy_version.rsplit("/", 1)[-1]
    # The first version has no champion to compare with: the whole fleet is its canary, judged
    # on its own (success floor 0, latency and error bounds), then it goes full and completes.
    config = RolloutConfig(
        canary_percent=100, canary_min_episodes=2, full_min_episodes=2, latency_p95_budget_ms=30_000
    )
    info = admin.start_rollout(StartRollout(candidate=version, config=config, reason="wamfleet demo"))
    summary.rollout_id = info.rollout_id
    console.print(f"rollout {info.rollout_id}: version {version} starts in {info.stage}")
    robots = [f"sim-{k + 1}" for k in range(options.robots)]
    plans = [
        AssignedRobotPlan(
            robot_id,
            api_url,
            admin.robot_token(robot_id, "sawyer-metaworld", site="sim"),
            options.tasks,
            options.rollout_episodes,
            seed=options.seed,
            image_size=options.image_size,
            max_steps=options.max_steps,
        )
        for robot_id in robots
    ]
    with console.status("robots driving under their assignments (the first episodes wait for the server)"):
        for episode in run_assigned_fleet(plans, summary.data_dir / "spool-autonomous"):
            summary.driven.append(
                DrivenEpisode(
                    task=f"{episode.robot_id} {episode.task}",
                    success=episode.success,
                    progress=episode.progress,
                    policy_version=f"{episode.assigned_version} ({episode.stage})",
                    requests=episode.requests,
                    latency_p50_ms=0.0,
                )
            )
            summary.autonomous_committed += int(episode.episode_id is not None)
    deadline = time.monotonic() + 60
    while True:
        summary.rollout = admin.rollout(info.rollout_id)
        if summary.rollout.stage in ("completed", "rolled_back", "aborted") or time.monotonic() > deadline:
            break
        time.sleep(1.0)


def print_summary(summary: DemoSummary, console: Console) -> None:
    table = Table(title="the catalog's view: committed episodes")
    for column in ("robot", "task", "episodes", "frames", "expert success"):
        table.add_column(column)
    counts: Counter[tuple[str, str]] = Counter()
    frames: Counter[tuple[str, str]] = Counter()
    wins: Counter[tuple[str, str]] = Counter()
    for e in summary.episodes:
        key = (e.robot_id, e.tags.get("env", e.task))
        counts[key] += 1
        frames[key] += e.num_frames
        wins[key] += int(bool(e.outcome.success))
    for key, count in sorted(counts.items()):
        table.add_row(key[0], key[1], str(count), str(frames[key]), f"{wins[key]}/{count}")
    console.print(table)
    console.print(
        f"{len(summary.episodes)} episodes, {summary.frames} frames, "
        f"{summary.bytes / 1e6:.2f} MB in the catalog; "
        f"{summary.frames_read_back} frames downloaded and verified"
    )
    if summary.train_losses:
        alias = "alias candidate" if summary.candidate else "gate failed, no alias"
        console.print(
            f"retrained {summary.policy_version} ({alias}): loss {summary.train_losses[0]:.3f} -> "
            f"{summary.train_losses[-1]:.3f} over {len(summary.train_losses)} steps"
        )
    if summary.driven:
        driven = Table(title="closed loop: the fleet driven by its assigned policy")
        for column in ("robot, task", "success", "progress", "policy (stage)", "requests"):
            driven.add_column(column)
        for d in summary.driven:
            driven.add_row(
                d.task, "yes" if d.success else "no", f"{d.progress:.2f}", d.policy_version, str(d.requests)
            )
        console.print(driven)
        console.print(f"{summary.autonomous_committed} autonomous episodes uploaded and committed")
    if summary.rollout is not None:
        decisions = Table(title=f"rollout {summary.rollout.rollout_id}: every decision")
        for column in ("action", "from", "to", "by", "reason"):
            decisions.add_column(column)
        for dec in summary.rollout.decisions:
            decisions.add_row(dec.action, dec.from_stage, dec.to_stage, dec.actor, dec.reason)
        console.print(decisions)
        console.print(f"rollout ended in stage {summary.rollout.stage}")
    console.print(f"catalog: {summary.data_dir / 'catalog.db'}")
    console.print(f"MLflow: {summary.data_dir / 'mlflow.db'} (mlflow ui --backend-store-uri sqlite:///...)")
    console.print(f"object store: {summary.data_dir / 'objects'}")
    console.print(f"LeRobot v3 dataset: {summary.lerobot_dir}")


def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the demo keeps everything (default: <WAMFLEET_DATA_DIR>/demo).")
    ] = None,
    robots: Annotated[int, typer.Option(min=1, max=16, help="Simulated robots, one process each.")] = 2,
    episodes: Annotated[int, typer.Option(min=1, max=1000, help="Episodes per robot.")] = 3,
    tasks: Annotated[
        str, typer.Option(help="Comma-separated Meta-World tasks, rotated over the robots.")
    ] = ",".join(DEFAULT_TASKS),
    seed: Annotated[int, typer.Option(help="Fleet seed for object layouts and action noise.")] = 0,
    train_steps: Annotated[int, typer.Option(min=1, help="Training steps of the demo policy.")] = 150,
) -> None:
    """Run the flywheel end to end on the embedded defaults."""
    base = load_settings()
    settings = base.model_copy(update={"data_dir": (data_dir or base.data_dir / "demo").resolve()})
    options = DemoOptions(
        robots=robots,
        episodes_per_robot=episodes,
        tasks=parse_tasks(tasks),
        seed=seed,
        train_steps=train_steps,
    )
    console = Console()
    summary = run_demo(settings, options, console)
    print_summary(summary, console)
