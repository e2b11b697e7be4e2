"""`wamfleet demo`: the whole flywheel on the embedded defaults, from an empty data dir.

The steps live in demo_flywheel.py, the report in demo_report.py; this module is the command:
which profile (`--quick` for a laptop, `gpu` for a GPU machine, `auto` picks), its overrides,
and whether the dashboard and the MLflow UI keep serving after the report.
"""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wamfleet.platform.cli.common import load_settings
from wamfleet.platform.cli.demo_flywheel import PROFILES, DemoProfile, run_demo
from wamfleet.platform.cli.fleet_cmd import parse_tasks


class ProfileName(StrEnum):
    auto = "auto"
    quick = "quick"
    smoke = "smoke"
    gpu = "gpu"


def choose_profile(name: ProfileName, quick: bool, console: Console) -> DemoProfile:
    if quick:
        return PROFILES["quick"]
    if name != ProfileName.auto:
        return PROFILES[name.value]
    import torch

    if torch.cuda.is_available():
        return PROFILES["gpu"]
    console.print("no GPU found: running the quick profile (the gpu profile is sized for a GPU machine)")
    return PROFILES["quick"]


def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the demo keeps everything (default: <WAMFLEET_DATA_DIR>/demo).")
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="The quick profile: minutes on 2 CPU cores (same as --profile quick)."),
    ] = False,
    profile: Annotated[
        ProfileName,
        typer.Option(
            help="quick, gpu, or auto: gpu when CUDA is available, else quick. smoke: every step on "
            "the smallest fleet in minutes (checks an install; its policy does not learn)."
        ),
    ] = ProfileName.auto,
    robots: Annotated[
        int | None, typer.Option(min=1, max=16, help="Simulated robots (profile's default).")
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(min=1, max=1000, help="Expert episodes per robot (profile's default).")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated Meta-World tasks, rotated over the robots.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Fleet seed for object layouts and action noise.")] = 0,
    train_steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps of the first retrain (a new model).")
    ] = None,
    resume_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Training steps of the second retrain (it resumes from the champion)."),
    ] = None,
    eval_episodes: Annotated[
        int | None,
        typer.Option(min=1, max=100, help="Closed-loop evaluation episodes per task and version."),
    ] = None,
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="Keep the dashboard and the MLflow UI up after the report until Ctrl-C "
            "(default: when run in a terminal).",
        ),
    ] = None,
) -> None:
    """Run the flywheel end to end on the embedded defaults and write a report."""
    console = Console(file=sys.stdout)  # this stream, even while a retrain's output is redirected
    chosen = choose_profile(profile, quick, console)
    overrides: dict[str, object] = {"seed": seed}
    if robots is not None:
        overrides["robots"] = robots
    if episodes is not None:
        overrides["episodes_per_robot"] = episodes
    if tasks is not None:
        overrides["tasks"] = parse_tasks(tasks)
    if train_steps is not None:
        overrides["train_steps"] = train_steps
    if resume_steps is not None:
        overrides["resume_steps"] = resume_steps
    if eval_episodes is not None:
        overrides["eval_episodes"] = eval_episodes
    chosen = dataclasses.replace(chosen, **overrides)  # type: ignore[arg-type]
    base = load_settings()
    settings = base.model_copy(update={"data_dir": (data_dir or base.data_dir / "demo").resolve()})
    console.print(
        f"wamfleet demo, {chosen.name} profile: {chosen.robots} robots x {chosen.episodes_per_robot} "
        f"episodes, {', '.join(chosen.tasks)}, model preset {chosen.preset} at {chosen.image_size} px, "
        f"{chosen.train_steps} + {chosen.resume_steps} training steps, {chosen.eval_episodes} evaluation "
        f"layouts per task; data in {settings.data_dir}"
    )
    keep_serving = sys.stdin.isatty() and sys.stdout.isatty() if serve is None else serve
    run_demo(settings, chosen, console, keep_serving)
