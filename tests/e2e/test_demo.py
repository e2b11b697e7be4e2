"""`wamfleet demo` as a user runs it: a subprocess, an empty data dir, the real robots, the
platform API, MLflow and its UI, the pipeline twice and two rollouts; then the report is checked.

The demo also is the pipeline's end-to-end test for lineage (both versions carry every lineage tag,
version 2 names version 1 as its parent) and for what a retrain leaves in the catalog and the store.

The suite runs the `smoke` profile: every step on the smallest fleet, about 4 minutes on two cores.
`WAMFLEET_TEST_DEMO_PROFILE=quick` runs the quick profile instead (12-14 minutes), and then also
checks that its policy acts: version 1 solves held-out layouts and fleet episodes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from wamfleet.platform.cli.demo_flywheel import PROFILES
from wamfleet.platform.cli.demo_report import DemoReport
from wamfleet.platform.contracts.lineage import LINEAGE_TAGS, TAG_RETRAIN
from wamfleet.platform.entrypoint import WAMFLEET_CLI

PROFILE = PROFILES[os.environ.get("WAMFLEET_TEST_DEMO_PROFILE", "smoke")]
# The quick demo takes 11-14 minutes on two cores: more than the suite's 600 s default.
DEMO_TIMEOUT_S = 1800
EXPERT_EPISODES = PROFILE.robots * PROFILE.episodes_per_robot
EVAL_EPISODES = PROFILE.eval_episodes * len(PROFILE.tasks)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEMO_TIMEOUT_S + 60)]


def _text(output: str | bytes | None) -> str:
    """TimeoutExpired carries what the child wrote so far, as bytes even with text=True."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def test_the_demo_turns_the_whole_flywheel_and_reports_it(tmp_path: Path) -> None:
    demo = tmp_path / "data" / "demo"
    env = os.environ | {"WAMFLEET_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    cmd = [*WAMFLEET_CLI, "demo", "--profile", PROFILE.name, "--no-serve"]
    # A leftover from an earlier demo run: the demo starts again from an empty demo dir.
    demo.mkdir(parents=True)
    (demo / ".wamfleet-demo").write_text("earlier run\n")
    (demo / "catalog.db").write_text("not a database")
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        tails = f"{_text(exc.stdout)[-4000:]}\n{_text(exc.stderr)[-4000:]}"
        pytest.fail(f"the demo ran past {DEMO_TIMEOUT_S} s:\n{tails}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    for step in range(1, 7):
        assert f"{step}/6 " in out
    assert "registered wamfleet-policy/1" in out and "registered wamfleet-policy/2" in out
    # Only progress, decisions and results: log records went to the demo's log file.
    terminal = out + result.stderr
    assert " INFO " not in terminal and "alembic" not in terminal, terminal[-4000:]
    assert "Running upgrade" in (demo / "logs" / "demo.log").read_text()
    # The pipeline's bar counts its steps (the robots' bar counts episodes of no set total: "20/?").
    assert out.count("pipeline: done") == 2 and "7/7" in out
    assert not re.search(r"pipeline[^\n]*\s0/\?", out)

    # The report names two versions, their closed-loop success and every rollout decision.
    report = DemoReport.model_validate_json((demo / "report" / "report.json").read_text())
    assert [v.version for v in report.versions] == ["1", "2"]
    v1, v2 = report.versions
    assert v1.parent == "none" and v2.parent == "1"
    for v, steps in ((v1, PROFILE.train_steps), (v2, PROFILE.resume_steps)):
        assert v.eval_success_rate is not None and 0.0 <= v.eval_success_rate <= 1.0
        assert v.eval_episodes == EVAL_EPISODES and v.eval_successes is not None
        assert v.train_steps == steps and v.final_train_loss is not None
    assert v1.fleet_episodes >= PROFILE.robots, v1
    assert re.search(
        rf"evaluation gate passed: alias candidate; success \d\.\d\d \(\d+/{EVAL_EPISODES}\)", out
    )
    if PROFILE.name == "quick":
        # The policy acts: version 1 solves held-out layouts in the pipeline's evaluation (0/10 would
        # mean the quick profile no longer learns: see docs/efficacy.md) and the fleet's own episodes.
        assert (v1.eval_successes or 0) >= 1, v1
        assert v1.fleet_successes >= 1, v1
    assert v1.latency_p95_ms is not None
    # Each decision printed once, when its rollout ended.
    decided = Counter((d.action, d.from_stage, d.to_stage) for r in report.rollouts for d in r.decisions)
    printed = Counter(re.findall(r"^  (\w+): (\w+) -> (\w+) \(", out, flags=re.MULTILINE))
    assert printed == decided, out[-4000:]
    first = report.rollouts[0]
    assert (first.candidate_version, first.champion_version, first.final_stage) == ("1", None, "completed")
    assert [(d.action, d.to_stage) for d in first.decisions] == [
        ("start", "canary"),
        ("advance", "full"),
        ("complete", "completed"),
    ]
    if not v2.gate_passed:  # version 2 lost to version 1 in evaluation: it never reaches a robot
        assert len(report.rollouts) == 1 and "failed its evaluation gate" in out
        assert "champion" in v1.aliases and v2.fleet_episodes == 0
        second = None
    else:
        second = report.rollouts[1]
        assert (second.candidate_version, second.champion_version) == ("2", "1")
        assert second.final_stage in ("completed", "rolled_back")
        assert [(d.action, d.to_stage) for d in second.decisions][:2] == [
            ("start", "shadow"),
            ("advance", "canary"),
        ]
        assert second.decisions[-1].to_stage == second.final_stage
        if second.final_stage == "completed":
            assert v2.fleet_episodes >= 1 and "champion" in v2.aliases and "previous" in v1.aliases
        else:
            assert "champion" in v1.aliases and "candidate" not in v2.aliases
    assert report.episodes == EXPERT_EPISODES + report.autonomous_episodes
    assert sum(sum(c.values()) for c in report.episodes_by_task_and_robot.values()) == report.episodes
    (funnel1, funnel2) = report.curation
    assert funnel1.steps[0] == ("in snapshot", EXPERT_EPISODES)
    assert funnel2.steps[0][1] > EXPERT_EPISODES  # the second retrain saw the fleet's autonomous episodes too

    page = (demo / "report" / "index.html").read_text()
    assert "wamfleet-policy/1" in page and "wamfleet-policy/2" in page
    last = second or first
    assert f'data-testid="rollout-stage">{last.final_stage}<' in page
    assert last.decisions[-1].reason.split(";")[0] in page.replace("&gt;", ">").replace("&lt;", "<")
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5
    assert report.dashboard_url.endswith("/dashboard") and report.mlflow_url.startswith("http://127.0.0.1:")
    assert f"dashboard: {report.dashboard_url}" in out and f"MLflow UI: {report.mlflow_url}" in out

    # Lineage in MLflow and the catalog: each version names its snapshot, dataset, parent, run.
    uri = f"sqlite:///{demo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with sqlite3.connect(demo / "catalog.db") as db:
        runs = db.execute(
            "select run_id, status, model_version, snapshot_hash from retrain_runs order by created_at"
        ).fetchall()
        assert [(r[1], r[2]) for r in runs] == [("succeeded", "1"), ("succeeded", "2")]
        autonomous = db.execute("select count(*) from episodes where source = 'autonomous'").fetchone()[0]
        assert autonomous == report.autonomous_episodes
    for (run_id, _, number, snapshot), expected_parent in zip(runs, ("none", "1"), strict=True):
        version = client.get_model_version("wamfleet-policy", number)
        for tag in LINEAGE_TAGS:
            assert version.tags.get(tag), f"version {number} lacks the lineage tag {tag}"
        assert version.tags["wamfleet.parent_version"] == expected_parent
        assert version.tags["wamfleet.failed_episodes"] == "world_model"  # outcome-aware by default
        assert version.tags[TAG_RETRAIN] == run_id and version.tags["wamfleet.snapshot"] == snapshot
        metrics = client.get_run(str(version.run_id)).data.metrics
        assert {"eval_success_rate", "eval_offline_action_mse", "final_loss", "train_loss"} <= set(metrics)
        objects = demo / "objects" / "datasets" / snapshot
        assert (objects / "snapshot.json").exists() and (objects / "validation.json").exists()
        assert list((objects / "curated").glob("*.json"))

    # The expert episodes were downloaded, verified and exported as LeRobot v3.
    info = json.loads((demo / "lerobot" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == EXPERT_EPISODES
    assert list((demo / "objects" / "uploads").rglob("*")) == []  # staging emptied after commit
    assert list(demo.glob("spool*/*/ready/*")) == []  # every robot's spool drained
