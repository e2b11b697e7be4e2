"""The published `openpi-client` in a venv of its own, as a robot runs it.

openpi-client pins numpy<2 (and imports typing_extensions without declaring it), so it cannot
share the project's environment. The venv is built once per test run; a test that needs it is
skipped, with pip's words, only when PyPI cannot be reached.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

PACKAGES = ["openpi-client", "numpy<2", "typing_extensions"]
# What pip says when it cannot reach the index (offline, DNS, proxy), as opposed to a real failure.
UNREACHABLE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|NewConnectionError|"
    r"Temporary failure in name resolution|Network is unreachable|ConnectTimeout|ReadTimeout|"
    r"Failed to establish a new connection|ProxyError|Max retries exceeded",
)


@functools.cache
def _build() -> tuple[Path | None, str]:
    directory = Path(tempfile.mkdtemp(prefix="openpi-venv-"))
    try:
        venv.create(directory, with_pip=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"python -m venv failed: {exc}"
    python = directory / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        if UNREACHABLE.search(install.stderr):
            return None, f"PyPI unreachable: {install.stderr.strip()[-300:]}"
        raise RuntimeError(f"pip install {' '.join(PACKAGES)} failed:\n{install.stderr[-2000:]}")
    return python, ""


def openpi_python() -> Path:
    """The venv's python with openpi-client installed; skips the test if PyPI is unreachable."""
    python, reason = _build()
    if python is None:
        pytest.skip(f"openpi-client venv cannot be created ({reason})")
    return python


def run_client(
    python: Path, script: str, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Runs `script` with the venv's python (never the project's)."""
    assert Path(python) != Path(sys.executable)
    return subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, timeout=timeout)
