"""`wamfleet fleet simulate`: Meta-World robots recording and uploading like real ones."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wamfleet.fleet_agent.sim.fleet import AgentLink, FleetMode, SimRobotPlan, plan_fleet, run_sim_fleet
from wamfleet.fleet_agent.sim.tasks import DEFAULT_TASKS
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.cli.common import fail, load_settings

app = typer.Typer(help="Simulated robot fleets.", no_args_is_help=True)


@dataclass
class FleetRun:
    recorded: int = 0
    uploaded: int = 0
    frames: int = 0
    bytes: int = 0
    per_task: Counter[str] = field(default_factory=Counter)


def parse_tasks(tasks: str) -> tuple[str, ...]:
    from wamfleet.fleet_agent.sim.metaworld_robot import known_task

    task_list = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if not task_list:
        fail("--tasks: name at least one Meta-World task")
    unknown = [t for t in task_list if not known_task(t)]
    if unknown:
        fail(f"--tasks: unknown Meta-World tasks {unknown}")
    return task_list


def simulate_fleet(
    api_url: str,
    admin_token: str,
    *,
    robots: int,
    episodes: int,
    tasks: tuple[str, ...],
    mode: FleetMode,
    spool_root: Path,
    seed: int = 0,
    image_size: int = 96,
    max_steps: int = 150,
    console: Console | None = None,
) -> FleetRun:
    """Registers the robots, runs them (one process each) and waits until every episode is committed."""
    from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
    from wamfleet.fleet_agent.video_import import human_video_embodiment

    spec = sawyer_embodiment(image_size)
    admin = AdminClient(api_url, admin_token)
    try:
        admin.register_embodiment(spec)
        admin.register_embodiment(human_video_embodiment())  # for `agent import-video`
        robot_ids = [f"sim-{k + 1}" for k in range(robots)]
        tokens = {rid: admin.robot_token(rid, spec.name, site="sim") for rid in robot_ids}
    finally:
        admin.close()
    schedule = plan_fleet(robot_ids, episodes, tasks, mode, seed)
    plans = [
        SimRobotPlan(
            robot_id=rid,
            episodes=schedule[rid],
            image_size=image_size,
            max_steps=max_steps,
            agent=AgentLink(api_url=api_url, token=tokens[rid]),
        )
        for rid in robot_ids
    ]
    run = FleetRun()
    total = robots * episodes
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console or Console()) as progress:
        recorded = progress.add_task(f"{robots} robots recording", total=total)
        uploaded = progress.add_task("uploaded + committed", total=total)
        for event in run_sim_fleet(plans, spool_root):
            if event.kind == "recorded":
                run.recorded += 1
                run.frames += event.manifest.num_frames
                run.per_task[event.manifest.tags.get("env", event.manifest.task)] += 1
                progress.advance(recorded)
            else:
                run.uploaded += 1
                run.bytes += event.manifest.total_bytes
                progress.advance(uploaded)
    return run


@app.command("simulate")
def simulate(
    api_url: Annotated[str, typer.Option(help="Platform API base URL.")] = "http://127.0.0.1:8600",
    robots: Annotated[int, typer.Option(min=1, max=64, help="Robots, one process each.")] = 2,
    episodes: Annotated[int, typer.Option(min=1, max=10000, help="Episodes per robot.")] = 3,
    tasks: Annotated[str, typer.Option(help="Comma-separated Meta-World tasks.")] = ",".join(DEFAULT_TASKS),
    mode: Annotated[
        FleetMode, typer.Option(help="diverse: new layouts, rotating tasks; repetitive: few.")
    ] = (FleetMode.diverse),
    seed: Annotated[int, typer.Option(help="Fleet seed for layouts and action noise.")] = 0,
    spool_root: Annotated[Path | None, typer.Option(help="Where the robots' spools live.")] = None,
) -> None:
    """Run simulated robots that record scripted-expert episodes and upload them through the API."""
    settings = load_settings()
    if settings.admin_token is None:
        fail("admin_token: set WAMFLEET_ADMIN_TOKEN to the platform's admin token")
    run = simulate_fleet(
        api_url,
        settings.admin_token.get_secret_value(),
        robots=robots,
        episodes=episodes,
        tasks=parse_tasks(tasks),
        mode=mode,
        spool_root=spool_root or settings.data_dir / "fleet-spool",
        seed=seed,
    )
    Console().print(
        f"{run.recorded} episodes recorded, {run.uploaded} committed, {run.frames} frames, "
        f"{run.bytes / 1e6:.2f} MB; per task: {dict(run.per_task)}"
    )
