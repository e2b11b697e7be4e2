"""`wamfleet`: one command with a subcommand group per component."""

from __future__ import annotations

import logging
import platform as std_platform
from importlib.metadata import version as package_version

import typer

from wamfleet.platform.cli import (
    agent_cmd,
    config_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    fleet_cmd,
    pipelines_cmd,
    platform_cmd,
    rollout_cmd,
    serve_cmd,
)
from wamfleet.platform.cli.common import load_settings

app = typer.Typer(
    name="wamfleet",
    help="Robot fleet learning with a World Action Model: record, curate, fine-tune, serve, roll out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Robot fleet learning with a World Action Model: record, curate, fine-tune, serve, roll out."""
    logging.basicConfig(
        level=load_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.add_typer(platform_cmd.app, name="platform")
app.add_typer(agent_cmd.app, name="agent")
app.add_typer(fleet_cmd.app, name="fleet")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(pipelines_cmd.app, name="pipelines")
app.command("retrain")(pipelines_cmd.retrain)
app.add_typer(rollout_cmd.app, name="rollout")
app.command("demo")(demo_cmd.demo)
app.command("serve")(serve_cmd.serve)


@app.command()
def version() -> None:
    """Print the wamfleet version."""
    typer.echo(f"wamfleet {package_version('wamfleet')} (Python {std_platform.python_version()})")


if __name__ == "__main__":  # the older spelling, kept for scripts that use it: see platform/entrypoint.py
    app(prog_name="wamfleet")
