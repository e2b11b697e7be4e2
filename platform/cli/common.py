"""Helpers every command group shares: settings with readable errors, failing with a message."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.settings import ENV_PREFIX, Settings

err_console = Console(stderr=True)

PolicyEndpoint = Annotated[
    str, typer.Option(help="Policy server: ws://host:port (openpi) or http://host:port (v2).")
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Ends the command with a one-line error naming what was wrong."""
    # soft_wrap: a path in the message must stay one piece (rich would break it at 80 columns).
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        fail(f"invalid settings ({ENV_PREFIX}*): {describe_validation_error(exc)}")
