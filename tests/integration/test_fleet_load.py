"""benchmarks/fleet_load.py keeps working: replicas as `wamfleet platform serve` processes on one
PostgreSQL catalog and one moto S3 process, robots spread over them, and its final count says
every episode arrived exactly once and whole."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import catalog_on

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "fleet_load.py"


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with catalog_on("postgresql", request, tmp_path) as url:
        yield url


def test_a_small_fleet_over_two_replicas_arrives_exactly_once(pg: str) -> None:
    args = ["--robots", "6", "--episodes-per-robot", "2", "--replicas", "2", "--frames", "8", "--size", "32"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), *args, "--catalog-url", pg],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARK.parents[1],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"\s+2\s+6\s+12\s", line)]
    assert len(rows) == 1, done.stdout
    numbers = [float(v) for v in rows[0] if re.fullmatch(r"[0-9.]+", v)]
    assert all(math.isfinite(v) for v in numbers) and numbers[3] > 0, rows[0]  # commits/s
    assert rows[0][-4:] == ["0", "0", "0", "0"], rows[0]  # errors, lost, duplicated, incomplete
    assert "final count: 12 episodes uploaded, 0 lost, 0 duplicated, 0 incomplete" in done.stdout
