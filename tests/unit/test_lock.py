"""constraints/lock.txt agrees with pyproject.toml, docker/constraints.txt with the lock, and this
environment with both: a dependency edited without `bash scripts/lock.sh` fails here."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from importlib.metadata import distributions
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _load_update_constraints() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "update_constraints", ROOT / "docker" / "update_constraints.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


uc = _load_update_constraints()


def disagreements(requirements: dict[str, list[Requirement]], pins: dict[str, Any]) -> list[str]:
    """What makes the lock wrong for pyproject: a requirement unpinned or pinned outside its range,
    a pin nothing needs any more, a pin without hashes."""
    problems = []
    for extra, reqs in requirements.items():
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{req} ({extra or 'base'}) is not in the lock")
            elif not req.specifier.contains(Version(pin.version), prereleases=True):
                problems.append(f"{req} ({extra or 'base'}) but the lock pins {pin.version}")
    roots = {canonicalize_name(r.name) for reqs in requirements.values() for r in reqs}
    for name in sorted(pins.keys() - uc.needed_by(pins, roots)):
        problems.append(f"{name}=={pins[name].version} is locked but nothing in pyproject.toml needs it")
    problems += [f"{name} has no hash" for name, pin in pins.items() if not pin.hashes]
    return problems


def test_the_lock_agrees_with_pyproject() -> None:
    problems = disagreements(uc.project_requirements(), uc.read_lock())
    assert not problems, "run `bash scripts/lock.sh`:\n" + "\n".join(problems)


def test_a_lock_that_disagrees_is_caught(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "numpy==2.1.0 \\\n    --hash=sha256:aa\n    # via wamfleet (pyproject.toml)\n"
        "stale==1.0 \\\n    --hash=sha256:bb\n    # via\n    #   gone\n"
        "nohash==3.0\n    # via numpy\n"
    )
    pins = uc.read_lock(lock)
    assert pins["stale"].via == ["gone"] and pins["numpy"].hashes == ["sha256:aa"]
    problems = disagreements(
        {"": [Requirement("numpy>=2.2")], "dev": [Requirement("pytest>=8")]},
        pins,
    )
    assert problems == [
        "numpy>=2.2 (base) but the lock pins 2.1.0",
        "pytest>=8 (dev) is not in the lock",
        "stale==1.0 is locked but nothing in pyproject.toml needs it",
        "nohash has no hash",
    ]


def test_torch_is_locked_at_the_cpu_pin() -> None:
    lines = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    (cpu,) = [Requirement(line) for line in lines if line.startswith("torch")]
    torch = uc.read_lock()["torch"]
    assert cpu.specifier.contains(Version(torch.version)) and Version(torch.version).local == "cpu"


def test_docker_constraints_are_generated_from_the_lock() -> None:
    written = (ROOT / "docker" / "constraints.txt").read_text()
    assert written == uc.render(uc.read_lock()), "run `.venv/bin/python docker/update_constraints.py`"
    assert "pytest==" not in written and "pip-tools==" not in written  # dev tools stay out of images
    assert "kfp==" in written and "fastapi==" in written


def test_this_environment_is_the_lock() -> None:
    # The venv's own site-packages only: Ray puts its vendored copies (psutil) on sys.path.
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    wrong = []
    for name, pin in uc.read_lock().items():
        found = list(distributions(name=name, path=site))
        installed = found[0].version if found else "missing"
        if installed != pin.version and canonicalize_name(name) not in {"pip", "setuptools", "wheel"}:
            wrong.append(f"{name}: locked {pin.version}, installed {installed}")
    assert not wrong, "run `bash scripts/bootstrap.sh`:\n" + "\n".join(wrong)
