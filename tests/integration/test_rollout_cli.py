"""`wamfleet rollout ...` against a live platform API: listing, errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.cli.main import app
from wamfleet.platform.settings import Settings

runner = CliRunner()


def test_rollout_commands_talk_to_the_api_and_name_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_token=SecretStr("admin-secret"))
    monkeypatch.setenv("WAMFLEET_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("WAMFLEET_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("COLUMNS", "200")
    with serve_in_thread(create_app(settings)) as url:
        listed = runner.invoke(app, ["rollout", "list", "--api-url", url])
        assert listed.exit_code == 0, listed.output
        assert "rollout" in listed.output and "stage" in listed.output

        missing = runner.invoke(app, ["rollout", "show", "nope", "--api-url", url])
        assert missing.exit_code == 2 and "no rollout 'nope'" in missing.output

        bad = tmp_path / "config.json"
        bad.write_text(json.dumps({"canary_percent": 150}))
        refused = runner.invoke(app, ["rollout", "start", "--config-file", str(bad), "--api-url", url])
        assert refused.exit_code == 2 and "canary_percent" in refused.output

        unknown = runner.invoke(app, ["rollout", "start", "7", "--no-shadow", "--api-url", url])
        assert unknown.exit_code == 2 and "has no version 7" in unknown.output

        wrong = runner.invoke(app, ["rollout", "abort", "nope", "--api-url", url])
        assert wrong.exit_code == 2 and "404" in wrong.output
