"""`WAMFLEET_CLI` is how code starts the `wamfleet` command as a child process."""

from __future__ import annotations

import os
import subprocess

from wamfleet.platform.entrypoint import WAMFLEET_CLI


def test_the_entry_point_runs_the_wamfleet_command() -> None:
    env = os.environ | {"COLUMNS": "200"}
    out = subprocess.run(
        [*WAMFLEET_CLI, "--help"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert "Usage: wamfleet " in out.stdout
    for command in ("agent", "platform", "retrain", "serve"):
        assert command in out.stdout
