"""`wamfleet platform`: the control-plane API server."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from wamfleet.platform.cli.common import err_console, load_settings
from wamfleet.platform.settings import Settings

app = typer.Typer(help="The platform API (catalog, uploads, episodes).", no_args_is_help=True)


def ensure_admin_token(settings: Settings) -> Settings:
    """Uses WAMFLEET_ADMIN_TOKEN, or the token kept in <data_dir>/admin-token (made once)."""
    if settings.admin_token is not None:
        return settings
    path = Path(settings.data_dir) / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        err_console.print(f"generated an admin token in {path} (set WAMFLEET_ADMIN_TOKEN to choose one)")
    return settings.model_copy(update={"admin_token": SecretStr(path.read_text().strip())})


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default WAMFLEET_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default WAMFLEET_API_PORT).")] = None,
) -> None:
    """Serve the platform API under uvicorn; OpenAPI docs at /docs."""
    import uvicorn

    from wamfleet.platform.api.app import create_app

    settings = ensure_admin_token(load_settings())
    # The app warns about anonymous dashboard reads by the address it is really bound to.
    overrides = {"api_host": host, "api_port": port}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    app_ = create_app(settings)
    uvicorn.run(app_, host=settings.api_host, port=settings.api_port, log_level="info")
