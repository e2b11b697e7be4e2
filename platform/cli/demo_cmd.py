"""`wamfleet demo`: the flywheel on the embedded defaults, from an empty data dir.

At this stage: simulated robots record episodes, the bundles land in the object store, are
read back and verified, and the lot is exported as a LeRobot v3 dataset.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wamfleet.fleet_agent.episode_io import EpisodeReader
from wamfleet.fleet_agent.sim.fleet import SimRobotPlan, run_sim_fleet
from wamfleet.fleet_agent.sim.metaworld_robot import known_task, sawyer_embodiment
from wamfleet.fleet_agent.sim.tasks import DEFAULT_TASKS
from wamfleet.pipelines.lerobot_v3 import export_lerobot
from wamfleet.platform.cli.common import fail, load_settings
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import open_object_store
from wamfleet.platform.storage.bundles import download_bundle, iter_manifests, upload_bundle
from wamfleet.platform.storage.embodiments import put_embodiment

DEMO_MARKER = ".wamfleet-demo"


@dataclass
class DemoOptions:
    robots: int = 2
    episodes_per_robot: int = 3
    tasks: tuple[str, ...] = DEFAULT_TASKS
    image_size: int = 96
    seed: int = 0
    max_steps: int = 150


@dataclass
class DemoSummary:
    data_dir: Path
    lerobot_dir: Path
    episodes: int = 0
    frames: int = 0
    bytes_uploaded: int = 0
    frames_read_back: int = 0
    per_robot: Counter[tuple[str, str]] = field(default_factory=Counter)
    successes: Counter[tuple[str, str]] = field(default_factory=Counter)


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
    data_dir = settings.data_dir
    prepare_data_dir(data_dir)
    store = open_object_store(settings)
    embodiment = sawyer_embodiment(options.image_size)
    put_embodiment(store, embodiment)
    summary = DemoSummary(data_dir=data_dir, lerobot_dir=data_dir / "lerobot")
    plans = [
        SimRobotPlan(
            robot_id=f"sim-{i + 1}",
            tasks=(options.tasks[i % len(options.tasks)],),
            episodes=options.episodes_per_robot,
            seed=options.seed,
            image_size=options.image_size,
            max_steps=options.max_steps,
        )
        for i in range(options.robots)
    ]
    total = options.robots * options.episodes_per_robot
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        record = progress.add_task(f"{options.robots} robots recording + uploading", total=total)
        for recorded in run_sim_fleet(plans, data_dir / "spool"):
            manifest = upload_bundle(store, recorded.directory)
            shutil.rmtree(recorded.directory)
            key = (manifest.robot_id, manifest.tags.get("env", manifest.task))
            summary.per_robot[key] += 1
            summary.successes[key] += int(bool(manifest.outcome.success))
            summary.episodes += 1
            summary.frames += manifest.num_frames
            summary.bytes_uploaded += manifest.total_bytes
            progress.advance(record)

        manifests = list(iter_manifests(store))
        readback = progress.add_task("reading back + verifying", total=len(manifests))
        with tempfile.TemporaryDirectory(prefix="wamfleet-demo-") as tmp:
            dirs = []
            for m in manifests:
                directory = Path(tmp) / str(m.episode_id)
                download_bundle(store, m.robot_id, m.episode_id, directory)
                with EpisodeReader(directory) as reader:
                    summary.frames_read_back += sum(1 for _ in reader.iter_frames())
                dirs.append(directory)
                progress.advance(readback)
            export = progress.add_task("exporting LeRobot v3 dataset", total=None)
            export_lerobot(dirs, summary.lerobot_dir, embodiment)
            progress.update(export, total=1, completed=1)
    return summary


def print_summary(summary: DemoSummary, console: Console) -> None:
    table = Table(title="episodes in the object store")
    for column in ("robot", "task", "episodes", "expert success"):
        table.add_column(column)
    for (robot, task), count in sorted(summary.per_robot.items()):
        table.add_row(robot, task, str(count), f"{summary.successes[(robot, task)]}/{count}")
    console.print(table)
    console.print(
        f"{summary.episodes} episodes, {summary.frames} frames, "
        f"{summary.bytes_uploaded / 1e6:.2f} MB uploaded; "
        f"{summary.frames_read_back} frames read back and verified"
    )
    console.print(f"object store: {summary.data_dir / 'objects'}")
    console.print(f"LeRobot v3 dataset: {summary.lerobot_dir}")


def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the demo keeps everything (default: <WAMFLEET_DATA_DIR>/demo).")
    ] = None,
    robots: Annotated[int, typer.Option(min=1, max=16, help="Simulated robots, one process each.")] = 2,
    episodes: Annotated[int, typer.Option(min=1, max=1000, help="Episodes per robot.")] = 3,
    tasks: Annotated[
        str, typer.Option(help="Comma-separated Meta-World tasks, one per robot in turn.")
    ] = ",".join(DEFAULT_TASKS),
    seed: Annotated[int, typer.Option(help="Fleet seed for object layouts and action noise.")] = 0,
) -> None:
    """Run the flywheel end to end on the embedded defaults."""
    base = load_settings()
    settings = base.model_copy(update={"data_dir": (data_dir or base.data_dir / "demo").resolve()})
    task_list = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if not task_list:
        fail("--tasks: name at least one Meta-World task")
    unknown = [t for t in task_list if not known_task(t)]
    if unknown:
        fail(f"--tasks: unknown Meta-World tasks {unknown}")
    console = Console()
    summary = run_demo(
        settings, DemoOptions(robots=robots, episodes_per_robot=episodes, tasks=task_list, seed=seed), console
    )
    print_summary(summary, console)
