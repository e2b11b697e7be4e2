"""`wamfleet demo` as a user runs it: a subprocess, an empty data dir, the real robots and API."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq


def test_demo_runs_platform_and_fleet_and_shows_the_catalog(tmp_path: Path) -> None:
    env = os.environ | {"WAMFLEET_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "wamfleet.platform.cli.main", "demo", "--episodes", "2"]
    for _ in range(2):  # a second run starts again from an empty demo dir
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the catalog's view" in out
    assert "4 episodes" in out
    assert "sim-1" in out and "sim-2" in out
    assert "reach-v3" in out and "push-v3" in out
    demo = tmp_path / "data" / "demo"
    manifests = list((demo / "objects" / "episodes").rglob("manifest.json"))
    assert len(manifests) == 4
    with sqlite3.connect(demo / "catalog.db") as db:
        assert db.execute("select count(*) from episodes").fetchone()[0] == 4
        assert db.execute("select count(*) from robots").fetchone()[0] == 2
    assert list((demo / "objects" / "uploads").rglob("*")) == []  # staging emptied after commit
    assert list(demo.glob("spool/*/ready/*")) == []  # every robot's spool drained
    info = json.loads((demo / "lerobot" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 4
    frames = sum(json.loads(m.read_text())["num_frames"] for m in manifests)
    assert info["total_frames"] == frames
    assert f"{frames} frames downloaded and verified" in out
    tasks = pq.read_table(demo / "lerobot" / "meta" / "tasks.parquet").to_pandas()
    assert len(tasks) == 2
