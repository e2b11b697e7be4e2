"""`wamfleet config`: what the settings resolve to on this machine."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from wamfleet.platform.cli.common import load_settings

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print every setting, its WAMFLEET_* variable and effective value (secrets masked)."""
    settings = load_settings()
    table = Table(title="wamfleet settings")
    table.add_column("variable")
    table.add_column("value")
    table.add_column("meaning")
    for env, value, description in settings.describe():
        table.add_row(env, value, description)
    Console().print(table)
