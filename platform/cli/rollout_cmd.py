"""`wamfleet rollout ...`: start and operate staged rollouts through the platform API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.cli.common import fail, load_settings
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.contracts.rollout import RolloutConfig, RolloutInfo, StartRollout

app = typer.Typer(help="Staged rollouts of policy versions (shadow, canary, full).", no_args_is_help=True)
console = Console()

ApiUrl = Annotated[str | None, typer.Option(help="Platform API (default: http://WAMFLEET_API_HOST:PORT).")]


def _admin(api_url: str | None) -> AdminClient:
    settings = load_settings()
    if settings.admin_token is None:
        token_file = Path(settings.data_dir) / "admin-token"
        if not token_file.exists():
            fail("WAMFLEET_ADMIN_TOKEN: not set and no <data dir>/admin-token to read")
        token = token_file.read_text().strip()
    else:
        token = settings.admin_token.get_secret_value()
    return AdminClient(api_url or f"http://{settings.api_host}:{settings.api_port}", token)


def print_rollout(info: RolloutInfo) -> None:
    flags = " (paused)" if info.paused else ""
    flags += " (awaiting approval)" if info.awaiting_approval else ""
    console.print(
        f"rollout {info.rollout_id}: {info.model_name} version {info.candidate_version} "
        f"against {info.champion_version or '(no champion)'}: [bold]{info.stage}[/]{flags}"
    )
    table = Table()
    for column in ("action", "from", "to", "by", "reason"):
        table.add_column(column)
    for d in info.decisions:
        table.add_row(d.action, d.from_stage, d.to_stage, d.actor, d.reason)
    console.print(table)


def _call(api_url: str | None, rollout_id: str, action: str) -> None:
    admin = _admin(api_url)
    try:
        print_rollout(admin.rollout_action(rollout_id, action))
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        admin.close()


@app.command("start")
def start(
    candidate: Annotated[str, typer.Argument(help="MLflow version number or alias.")] = "candidate",
    config_file: Annotated[Path | None, typer.Option(help="RolloutConfig as JSON.")] = None,
    canary_percent: Annotated[
        float | None, typer.Option(help="Share of robots in the canary cohort.")
    ] = None,
    no_shadow: Annotated[bool, typer.Option("--no-shadow", help="Skip the shadow stage.")] = False,
    require_approval: Annotated[bool, typer.Option(help="Canary waits for `rollout approve`.")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept with the rollout).")] = "",
    api_url: ApiUrl = None,
) -> None:
    """Start rolling a registered version out to the fleet."""
    try:
        data = json.loads(config_file.read_text()) if config_file else {}
        if canary_percent is not None:
            data["canary_percent"] = canary_percent
        if no_shadow:
            data["shadow"] = False
        if require_approval:
            data["require_approval"] = True
        config = RolloutConfig.model_validate(data)
    except OSError as exc:
        fail(f"--config-file: {exc}")
    except (ValueError, ValidationError) as exc:
        message = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        fail(f"rollout config: {message}")
    admin = _admin(api_url)
    try:
        print_rollout(admin.start_rollout(StartRollout(candidate=candidate, config=config, reason=reason)))
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        admin.close()


@app.command("list")
def list_cmd(api_url: ApiUrl = None) -> None:
    """Every rollout, newest first."""
    admin = _admin(api_url)
    try:
        table = Table()
        for column in ("rollout", "version", "champion", "stage", "created"):
            table.add_column(column)
        for r in admin.rollouts():
            table.add_row(
                r.rollout_id, r.candidate_version, r.champion_version or "", r.stage, str(r.created_at)
            )
        console.print(table)
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        admin.close()


@app.command("show")
def show(rollout_id: str, api_url: ApiUrl = None) -> None:
    """One rollout with every decision."""
    admin = _admin(api_url)
    try:
        print_rollout(admin.rollout(rollout_id))
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        admin.close()


@app.command("approve")
def approve(rollout_id: str, api_url: ApiUrl = None) -> None:
    """Let a canary that passed its gate go to full."""
    _call(api_url, rollout_id, "approve")


@app.command("pause")
def pause(rollout_id: str, api_url: ApiUrl = None) -> None:
    """Stop automatic promotion (guardrail rollbacks still fire)."""
    _call(api_url, rollout_id, "pause")


@app.command("resume")
def resume(rollout_id: str, api_url: ApiUrl = None) -> None:
    """Resume automatic decisions."""
    _call(api_url, rollout_id, "resume")


@app.command("abort")
def abort(rollout_id: str, api_url: ApiUrl = None) -> None:
    """End the rollout now; the champion stays (or is restored)."""
    _call(api_url, rollout_id, "abort")
