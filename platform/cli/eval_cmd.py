"""`wamfleet eval`: how well a served policy does, measured in closed loop on simulated robots."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from wamfleet.platform.cli.common import PolicyEndpoint, fail

app = typer.Typer(help="Evaluate served policies.", no_args_is_help=True)
console = Console()


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds is not None else "-"


@app.command("closed-loop")
def closed_loop(
    endpoint: PolicyEndpoint,
    tasks: Annotated[str, typer.Option(help="Comma-separated Meta-World tasks.")] = "reach-v3",
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per task.")] = 10,
    max_steps: Annotated[int, typer.Option(min=1, help="Control steps per episode at most.")] = 150,
    seed: Annotated[
        int, typer.Option(help="Seeds the held-out layouts (disjoint from data collection).")
    ] = 0,
    image_size: Annotated[int, typer.Option(min=8, help="Camera image side in pixels.")] = 96,
    merge: Annotated[str, typer.Option(help="Overlapping chunks: latest or weighted.")] = "latest",
    api_key: Annotated[
        str | None, typer.Option(envvar="WAMFLEET_POLICY_API_KEY", help="The policy server's Api-Key.")
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="Per-request timeout; then the robot holds still.")] = 5.0,
    realtime: Annotated[
        bool,
        typer.Option(help="Drive on the wall clock at the robot's rate, measuring the control rate."),
    ] = False,
) -> None:
    """Run the policy on simulated robots; print success rate per task, latency and control rate."""
    from wamfleet.fleet_agent.sim.drive import evaluate_closed_loop
    from wamfleet.platform.cli.fleet_cmd import parse_tasks

    task_list = parse_tasks(tasks)
    if merge not in ("latest", "weighted"):
        fail(f"--merge: expected latest or weighted, got {merge!r}")
    try:
        report = evaluate_closed_loop(
            endpoint,
            task_list,
            episodes,
            seed,
            api_key=api_key,
            max_steps=max_steps,
            image_size=image_size,
            merge="weighted" if merge == "weighted" else "latest",
            timeout_s=timeout_s,
            realtime=realtime,
        )
    except ValueError as exc:
        fail(str(exc))
    versions = ", ".join(report.policy_versions) or "- (no answer from the policy)"
    console.print(f"policy {versions} at {endpoint}", highlight=False)
    for result in report.tasks.values():
        console.print(
            f"{result.task}: success rate {result.success_rate:.0%} ({result.successes}/{result.episodes}), "
            f"mean progress {result.mean_progress:.2f}, safe actions {result.safe_actions}",
            highlight=False,
        )
    console.print(
        f"latency p50 {_ms(report.latency_p50_s)}, p99 {_ms(report.latency_p99_s)} "
        f"over {report.chunks} chunks ({report.requests} requests)",
        highlight=False,
    )
    if report.clock == "wall":
        console.print(
            f"control rate achieved on the wall clock {report.control_rate_hz:.1f} Hz "
            f"(target {report.target_rate_hz:.1f} Hz, {report.overruns} late steps); driven by the "
            f"policy's actions {report.policy_rate_hz:.1f} Hz ({report.safe_actions} safe actions "
            f"of {report.steps} steps)",
            highlight=False,
        )
    else:
        console.print(
            f"simulated clock: {report.steps} steps, {report.safe_actions} safe actions "
            f"({report.policy_rate_hz:.1f} Hz of policy actions at the simulated "
            f"{report.target_rate_hz:.1f} Hz); the control rate is measured with --realtime",
            highlight=False,
        )
