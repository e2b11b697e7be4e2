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
    cmd = [
        sys.executable,
        "-m",
        "wamfleet.platform.cli.main",
        "demo",
        "--episodes",
        "2",
        "--train-steps",
        "20",
    ]
    # A leftover from an earlier demo run: the demo starts again from an empty demo dir.
    stale = tmp_path / "data" / "demo"
    stale.mkdir(parents=True)
    (stale / ".wamfleet-demo").write_text("earlier run\n")
    (stale / "catalog.db").write_text("not a database")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the catalog's view" in out
    assert "4 episodes" in out
    assert "sim-1" in out and "sim-2" in out
    assert "reach-v3" in out and "push-v3" in out
    demo = tmp_path / "data" / "demo"
    # A retrain ran the pipeline and registered version 1, which was rolled out to the simulated
    # fleet: canary (the whole fleet: no champion yet), full, completed, every decision printed;
    # the robots' episodes were uploaded too, stamped with the version.
    assert "retrained wamfleet-policy/1 (alias candidate): loss" in out
    assert "closed loop: the fleet driven by its assigned policy" in out
    assert "autonomous episodes uploaded and committed" in out
    assert "every decision" in out and "rollout ended in stage completed" in out
    with sqlite3.connect(demo / "catalog.db") as db:
        assert db.execute("select count(*) from robots").fetchone()[0] == 2
        rows = db.execute("select policy_version from episodes where source = 'autonomous'").fetchall()
        assert len(rows) >= 4 and set(rows) == {("wamfleet-policy/1",)}
        assert f"{len(rows)} autonomous episodes uploaded and committed" in out
        decisions = db.execute("select action, to_stage from rollout_decisions order by id").fetchall()
        assert decisions == [("start", "canary"), ("advance", "full"), ("complete", "completed")]
        runs = db.execute("select status, model_version, candidate from retrain_runs").fetchall()
        assert runs == [("succeeded", "1", 1)]
    manifests = [
        m
        for m in (demo / "objects" / "episodes").rglob("manifest.json")
        if '"autonomous"' not in m.read_text()
    ]
    assert len(manifests) == 4
    assert list((demo / "objects" / "uploads").rglob("*")) == []  # staging emptied after commit
    assert list(demo.glob("spool/*/ready/*")) == []  # every robot's spool drained
    info = json.loads((demo / "lerobot" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 4
    frames = sum(json.loads(m.read_text())["num_frames"] for m in manifests)
    assert info["total_frames"] == frames
    assert f"{frames} frames downloaded and verified" in out
    tasks = pq.read_table(demo / "lerobot" / "meta" / "tasks.parquet").to_pandas()
    assert len(tasks) == 2
