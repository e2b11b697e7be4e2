"""The compiled pipeline and the evaluation gate: what a cluster runs and what decides `candidate`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from wamfleet.pipelines.evaluate import EvalReport, PolicyScores, decide_gate
from wamfleet.pipelines.pipeline import CONFIG_ENV, SECRET_ENV, STEPS, compile_pipeline


def test_compiled_yaml_names_every_component_in_order(tmp_path: Path) -> None:
    spec = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text().split("\n---\n")[0])
    assert spec["pipelineInfo"]["name"] == "continuous-finetune"
    assert set(spec["components"]) == {f"comp-{s}" for s in STEPS}
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS)
    assert tasks["validate"]["dependentTasks"] == ["snapshot"]
    assert set(tasks["register"]["dependentTasks"]) >= {"finetune", "evaluate", "curate", "shards"}
    for later, step in enumerate(STEPS):  # STEPS is an order they can run in (the demo counts it)
        assert set(tasks[step].get("dependentTasks", [])) <= set(STEPS[:later]), step
    assert all(
        tasks[s]["cachingOptions"] == {} or not tasks[s]["cachingOptions"].get("enableCache") for s in STEPS
    )
    executors = spec["deploymentSpec"]["executors"]
    for step in STEPS:
        container = executors[f"exec-{step}"]["container"]
        assert container["image"].startswith("ghcr.io/wamfleet/")
        assert "pip install" not in " ".join(container["command"])  # the image carries wamfleet
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"params_json", "retrain_run_id"}


def test_every_step_gets_settings_from_the_secret_and_config_map(tmp_path: Path) -> None:
    docs = compile_pipeline(tmp_path / "p.yaml").read_text().split("\n---\n")
    platform = yaml.safe_load(docs[1])["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == {f"exec-{s}" for s in STEPS}
    for config in platform.values():
        secret_keys = {k["envVar"] for s in config["secretAsEnv"] for k in s["keyToEnv"]}
        config_keys = {k["envVar"] for c in config["configMapAsEnv"] for k in c["keyToEnv"]}
        assert secret_keys == set(SECRET_ENV) and config_keys == set(CONFIG_ENV)


def scores(success: float | None = None, mse: float | None = None) -> PolicyScores:
    return PolicyScores(version="x", success_rate=success, offline_action_mse=mse)


@pytest.mark.parametrize(
    ("candidate", "champion", "passed"),
    [
        (scores(0.5), None, True),  # no champion: the floor alone
        (scores(0.5), scores(0.55), True),  # within the margin
        (scores(0.4), scores(0.55), False),  # worse beyond the margin
        (scores(0.9), scores(0.55), True),
        (scores(None, 0.10), scores(None, 0.105), True),  # offline only: action error
        (scores(None, 0.20), scores(None, 0.10), False),
        (scores(None, math.nan), None, False),  # nothing measured never passes
    ],
)
def test_gate_against_the_champion(
    candidate: PolicyScores, champion: PolicyScores | None, passed: bool
) -> None:
    decision = decide_gate(candidate, champion, margin=0.1, min_success=0.0)
    assert decision.passed is passed, decision.reason
    assert decision.reason


def test_gate_floor_applies_even_without_a_champion() -> None:
    decision = decide_gate(scores(0.2), None, margin=0.1, min_success=0.5)
    assert not decision.passed and "floor" in decision.reason


def test_gate_reason_and_metrics_carry_the_counts_behind_each_rate() -> None:
    candidate = PolicyScores(version="2", success_rate=0.6, successes=6, episodes=10)
    champion = PolicyScores(version="1", success_rate=0.5, successes=5, episodes=10)
    decision = decide_gate(candidate, champion, margin=0.1, min_success=0.0)
    assert decision.passed and "0.60 (6/10)" in decision.reason and "0.50 (5/10)" in decision.reason
    report = EvalReport(
        candidate=candidate, champion=champion, gate=decision, tasks=["t"], heldout_tasks=[], seed=0
    )
    metrics = report.metrics()
    assert (metrics["eval_successes"], metrics["eval_episodes"]) == (6.0, 10.0)
    assert (metrics["champion_successes"], metrics["champion_episodes"]) == (5.0, 10.0)
