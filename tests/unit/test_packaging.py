"""The layout rules of DESIGN.md: folder-to-package mapping and the stdlib `platform` module."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ["platform", "fleet_agent", "model", "pipelines", "serving"]


def test_platform_folder_has_no_top_level_init() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = set()
    for folder in FOLDERS:
        assert config["package-dir"][f"wamfleet.{folder}"] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            on_disk.add(f"wamfleet.{rel}")
    on_disk.add("wamfleet.platform")  # a namespace portion, listed so setuptools maps it
    assert listed == on_disk


def test_stdlib_platform_is_not_shadowed_from_repo_root() -> None:
    code = "import platform, wamfleet.platform.contracts; print(platform.python_version())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ".".join(map(str, sys.version_info[:3]))


def test_fleet_agent_does_not_import_heavy_server_libraries() -> None:
    code = (
        "import sys, wamfleet.fleet_agent.episode_writer, wamfleet.fleet_agent.episode_reader;"
        "import wamfleet.fleet_agent.sim.fleet;"
        "bad = [m for m in ('torch', 'fastapi', 'sqlalchemy') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci[-1] in (ROOT / "README.md").read_text()


def test_the_cli_loads_without_server_or_model_libraries() -> None:
    # A robot with only the base install runs `wamfleet agent ...` through the same entry point.
    code = (
        "import sys, wamfleet.platform.cli.main;"
        "heavy = ('torch', 'fastapi', 'sqlalchemy', 'metaworld', 'mujoco', 'uvicorn', 'alembic');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_imports_nothing_else_of_wamfleet() -> None:
    import re

    for path in (ROOT / "model").glob("*.py"):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:from|import) (wamfleet\.\w+)", line)
            if match:
                assert match.group(1) == "wamfleet.model", f"{path.name}: {line.strip()}"
