from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import WriteEpisode
from wamfleet.platform.cli.main import app
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import open_object_store
from wamfleet.platform.storage.bundles import upload_bundle

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("WAMFLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "data"


def test_help_lists_the_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("version", "demo", "config", "data"):
        assert name in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("wamfleet 0.1.0")


def test_export_with_nothing_to_export_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "export-lerobot", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no committed episodes" in result.output


def test_export_then_import_through_the_cli(
    write_episode: WriteEpisode, data_dir: Path, tmp_path: Path
) -> None:
    store = open_object_store(Settings(data_dir=data_dir))
    for _ in range(2):
        upload_bundle(store, write_episode(frames=4)[0])
    result = runner.invoke(app, ["data", "export-lerobot", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "wrote 2 episodes, 8 frames" in result.output
    listing = runner.invoke(app, ["data", "ls"])
    assert listing.output.count("robot-1") == 2

    # Importing into a fresh store brings the same episodes back.
    other = tmp_path / "other"
    result = runner.invoke(
        app, ["data", "import-lerobot", str(tmp_path / "ds")], env={"WAMFLEET_DATA_DIR": str(other)}
    )
    assert result.exit_code == 0, result.output
    assert "imported 2 episodes" in result.output
    again = open_object_store(Settings(data_dir=other))
    assert sorted(i.key for i in again.list("episodes/")) == sorted(i.key for i in store.list("episodes/"))


def test_import_of_a_non_dataset_names_the_problem(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "import-lerobot", str(tmp_path)])
    assert result.exit_code == 2
    assert "meta/info.json: missing" in result.output


def test_an_error_naming_a_long_path_keeps_it_in_one_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich wrapped error messages at the terminal's width, breaking paths with newlines (one a
    user could not paste back); the terminal wraps them now."""
    monkeypatch.setenv("COLUMNS", "40")
    dataset = tmp_path / ("a-dataset-with-a-long-name-" * 3)
    dataset.mkdir()
    result = runner.invoke(app, ["data", "import-lerobot", str(dataset)])
    assert result.exit_code == 2
    assert f"{dataset}/meta/info.json: missing" in result.output


def test_demo_refuses_a_foreign_non_empty_dir(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete")
    result = runner.invoke(app, ["demo", "--data-dir", str(target)])
    assert result.exit_code == 2
    assert "not made by `wamfleet demo`" in result.output
    assert (target / "thesis.tex").exists()


def test_demo_rejects_unknown_tasks(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data-dir", str(tmp_path / "d"), "--tasks", "fly-to-mars-v3"])
    assert result.exit_code == 2
    assert "fly-to-mars-v3" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--dtype", "fp8"], "--dtype: expected one of"), (["--device", "tpu"], "--device: expected cpu")],
)
def test_serve_names_a_bad_precision_or_device(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["serve", "--policy", str(tmp_path / "p"), *args])
    assert result.exit_code == 2
    assert message in result.output
