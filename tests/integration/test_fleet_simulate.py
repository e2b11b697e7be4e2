"""`wamfleet fleet simulate` against a live platform: robots register, record and upload."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import ADMIN, ADMIN_TOKEN
from tests.integration.api_support import settings_for
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.cli.main import app

# Simulated robots in their own processes: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow


def test_fleet_simulate_uploads_through_the_api(tmp_path: Path) -> None:
    with serve_in_thread(create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}"))) as url:
        env = {
            "WAMFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
            "WAMFLEET_DATA_DIR": str(tmp_path / "cli"),
            "COLUMNS": "200",
        }
        args = ["fleet", "simulate", "--api-url", url, "--robots", "2", "--episodes", "1"]
        args += [
            "--tasks",
            "reach-v3,push-v3",
            "--mode",
            "repetitive",
            "--spool-root",
            str(tmp_path / "spools"),
        ]
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "2 episodes recorded, 2 committed" in result.output
        items = httpx.get(f"{url}/v1/episodes", headers=ADMIN).json()["items"]
        assert sorted(i["robot_id"] for i in items) == ["sim-1", "sim-2"]
        assert {i["tags"]["env"] for i in items} == {"reach-v3"}  # repetitive: a quarter of the tasks
        robots = httpx.get(f"{url}/v1/robots", headers=ADMIN).json()
        assert all(r["last_seen_at"] for r in robots)
        # Running it again re-issues tokens to the same robots rather than failing.
        again = CliRunner().invoke(app, args, env=env)
        assert again.exit_code == 0, again.output
        assert len(httpx.get(f"{url}/v1/episodes", headers=ADMIN).json()["items"]) == 4


def test_fleet_simulate_needs_the_admin_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["fleet", "simulate"], env={"WAMFLEET_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "admin_token" in result.output
