"""`python -m wamfleet.platform.cli ...` runs the `wamfleet` command (see wamfleet.platform.entrypoint)."""

from __future__ import annotations

from wamfleet.platform.cli.main import app

if __name__ == "__main__":
    app(prog_name="wamfleet")
