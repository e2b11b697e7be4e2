"""Writes docker/constraints.txt from constraints/lock.txt: the images install what the CPU venv does.

constraints/lock.txt (written by `bash scripts/lock.sh`) pins every package of the CPU environment,
dev tools included. The images need only what `wamfleet[all]` and the packages the Dockerfiles
name pull in, so this keeps the lock's pins reachable from those roots, following the lock's own
`# via` annotations, and drops the hashes. torch loses its local label (`+cpu`): each GPU image
installs the CUDA build of the same version itself. `scripts/lock.sh` runs this after every
refresh; tests/unit/test_lock.py fails when the file differs from what this writes.

    .venv/bin/python docker/update_constraints.py
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints" / "lock.txt"
OUT = ROOT / "docker" / "constraints.txt"
# What the Dockerfiles ask pip for besides torch and the wamfleet wheel's own extras, and what pip
# needs to build the wamfleet wheel (pyproject's build-system.requires).
IMAGE_ROOTS = ("kfp", "kubernetes", "mlflow-skinny", "boto3", "setuptools", "wheel")
# The extras the images install (`wamfleet[all]`); `dev` stays on developer machines.
IMAGE_EXTRAS = ("sim", "model", "platform", "train", "serve")
PROJECT = "wamfleet (pyproject.toml)"
HEADER = """\
# Exact versions for every Python package the images install (docker/*.Dockerfile pass this
# file with -c). Generated from constraints/lock.txt by docker/update_constraints.py (run by
# scripts/lock.sh): do not edit by hand. torch has no local label: the GPU images install the
# CUDA build of this version (+cu128), the CPU venv the +cpu one.
"""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass
class Pin:
    """One package of the lock: its exact version, its hashes and who needs it (`# via`)."""

    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """Canonical name -> Pin, parsed from pip-compile's `--generate-hashes` output."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if match := _PIN.match(raw):
            current = Pin(version=match.group(2))
            pins[canonicalize_name(match.group(1))] = current
            in_via = False
        elif current is None or not line:
            continue
        elif line.startswith("--hash=sha256:"):
            current.hashes.append(line.removeprefix("--hash=").rstrip(" \\"))
        elif line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            current.via.extend([rest] if rest else [])
            in_via = not rest
        elif in_via and line.startswith("#   "):
            current.via.append(line.removeprefix("#").strip())
        else:
            in_via = False
    return pins


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, list[Requirement]]:
    """Extra ("" for the base) -> wamfleet's own requirements, the self-referencing `all` left out."""
    project = tomllib.loads(pyproject.read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    parsed = {extra: [Requirement(r) for r in reqs] for extra, reqs in groups.items()}
    return {
        extra: [r for r in reqs if canonicalize_name(r.name) != "wamfleet"] for extra, reqs in parsed.items()
    }


def needed_by(pins: dict[str, Pin], roots: set[str]) -> set[str]:
    """The roots and every pin that some already-needed pin (or the roots) pulls in, via the lock."""
    needed = set(roots)
    changed = True
    while changed:
        changed = False
        for name, pin in pins.items():
            if name not in needed and any(canonicalize_name(v) in needed for v in pin.via):
                needed.add(name)
                changed = True
    return needed


def image_pins(pins: dict[str, Pin]) -> dict[str, str]:
    """Name -> public version of every pin the images install."""
    groups = project_requirements()
    roots = {canonicalize_name(r.name) for extra in ("", *IMAGE_EXTRAS) for r in groups[extra]}
    roots |= {canonicalize_name(r) for r in IMAGE_ROOTS}
    return {name: Version(pins[name].version).public for name in sorted(needed_by(pins, roots) & pins.keys())}


def render(pins: dict[str, Pin]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in image_pins(pins).items())


def main() -> None:
    text = render(read_lock())
    OUT.write_text(text)
    print(f"wrote {text.count(chr(10)) - HEADER.count(chr(10))} pins to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
