from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wamfleet.platform.cli.main import app
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import LocalObjectStore, S3ObjectStore, open_object_store

runner = CliRunner()


def test_settings_read_the_wamfleet_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WAMFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WAMFLEET_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("WAMFLEET_S3_SECRET_KEY", "hunter2")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.storage_backend == "s3"
    assert settings.s3_secret_key is not None and settings.s3_secret_key.get_secret_value() == "hunter2"
    rows = {env: value for env, value, _ in settings.describe()}
    assert rows["WAMFLEET_S3_SECRET_KEY"] == "********"
    assert rows["WAMFLEET_DATA_DIR"] == str(tmp_path)


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAMFLEET_S3_SECRET_KEY", "hunter2")
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "WAMFLEET_S3_SECRET_KEY" in result.output
    assert "hunter2" not in result.output
    assert "********" in result.output


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAMFLEET_STORAGE_BACKEND", "ftp")
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "storage_backend" in result.output


def test_object_store_follows_settings(tmp_path: Path, moto_endpoint: str) -> None:
    local = open_object_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalObjectStore)
    assert local.root == (tmp_path / "objects").resolve()
    s3 = open_object_store(
        Settings(
            storage_backend="s3",
            s3_endpoint=moto_endpoint,
            s3_access_key="a",
            s3_secret_key="b",  # type: ignore[arg-type]
            s3_region="us-east-1",
        )
    )
    assert isinstance(s3, S3ObjectStore)
    s3.put_bytes("hello", b"world")
    assert s3.get_bytes("hello") == b"world"


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for env, _, _ in Settings().describe():
        assert f"| `{env}` |" in readme, f"README's configuration table lacks {env}"
