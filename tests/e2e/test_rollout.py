"""Staged rollouts end to end: the platform API, local policy servers per version, MLflow aliases,
and simulated Meta-World robots that ask for their policy between episodes.

A good candidate goes shadow -> canary -> full -> completed and becomes the champion; a
candidate with a corrupted action head (NaN actions: every request fails on the robot) is
rolled back automatically within the guardrail's episodes. No robot ever runs two versions in
one episode, and a robot's canary cohort never changes within a rollout.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest
import torch
from mlflow import MlflowClient
from pydantic import SecretStr

from tests.conftest import MakeMlflowStore
from tests.unit.serving.policy_support import tiny_policy
from wamfleet.fleet_agent.sim.assigned import AssignedEpisode, AssignedRobotPlan, run_assigned_fleet
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.fleet_agent.sim.scripted_policy import write_scripted_policy
from wamfleet.model.policy import load_policy, save_policy
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.contracts.rollout import RolloutConfig, RolloutInfo, StartRollout
from wamfleet.platform.settings import Settings
from wamfleet.serving.mlflow_model import log_policy

MODEL = "wamfleet-policy"
TASKS = ("reach-v3", "push-v3")


@dataclass
class Fleet:
    settings: Settings
    api_url: str
    admin: AdminClient
    tokens: dict[str, str]
    registry: MlflowClient


def nan_head(source: Path, target: Path) -> Path:
    """The planted regression: the action decoder's weights are NaN."""
    policy = load_policy(source)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if name.startswith("action_decoders."):
                param.fill_(float("nan"))
    save_policy(target, policy.model, policy.codec, embodiments=policy.embodiments, metadata={})
    return target


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, mlflow_store: MakeMlflowStore) -> Iterator[Fleet]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rollout")
    token = secrets.token_urlsafe(16)
    settings = Settings(data_dir=root / "data", admin_token=SecretStr(token), rollout_check_interval_s=0.5)
    uri = mlflow_store(settings.data_dir / "mlflow.db")  # this module's copy of the migrated empty store
    assert uri == settings.effective_mlflow_uri
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the fluent API below; the servers get it from the settings
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.create_experiment("policies", artifact_location=(root / "artifacts").as_uri())
        good = tiny_policy(root / "v1", seed=0)
        # Versions 4 and 5: the scripted reach expert, competent in every episode or in none:
        # policies of known quality, served through the same `wamfleet serve` path as a WAM.
        expert = write_scripted_policy(root / "v4", 1.0, ("reach-v3",), version=f"{MODEL}/4")
        idle = write_scripted_policy(root / "v5", 0.0, ("reach-v3",), version=f"{MODEL}/5")
        for directory in (good, tiny_policy(root / "v2", seed=1), nan_head(good, root / "v3"), expert, idle):
            with mlflow.start_run(experiment_id=experiment):
                log_policy(directory, registered_model_name=MODEL)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    client.set_registered_model_alias(MODEL, "champion", "1")
    app = create_app(settings)
    with serve_in_thread(app) as api_url:
        admin = AdminClient(api_url, token, timeout_s=120)
        admin.register_embodiment(sawyer_embodiment(96))
        tokens = {f"r{k}": admin.robot_token(f"r{k}", "sawyer-metaworld", site="sim") for k in range(4)}
        try:
            yield Fleet(settings, api_url, admin, tokens, client)
        finally:
            app.state.platform.rollouts.backend.stop("1")
            for version in ("2", "3", "4", "5"):
                app.state.platform.rollouts.backend.stop(version)
            admin.close()


def drive(
    fleet: Fleet, episodes: int, spool: Path, tasks: tuple[str, ...] = TASKS, max_steps: int = 40
) -> list[AssignedEpisode]:
    """Each robot drives at least `episodes`, then on while the rollout is active (up to 4x that):
    how fast the controller decides must not decide whether the rollout can finish."""
    plans = [
        AssignedRobotPlan(
            robot_id,
            fleet.api_url,
            token,
            tasks,
            episodes,
            seed=k,
            image_size=96,
            max_steps=max_steps,
            until_rollout_ends=4 * episodes,
        )
        for k, (robot_id, token) in enumerate(sorted(fleet.tokens.items()))
    ]
    return list(run_assigned_fleet(plans, spool, timeout_s=600))


def wait_for(fleet: Fleet, rollout_id: str, stages: set[str], timeout_s: float = 60) -> RolloutInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        info = fleet.admin.rollout(rollout_id)
        if info.stage in stages or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def check_whole_episodes(episodes: list[AssignedEpisode]) -> None:
    cohorts: dict[tuple[str, str | None], set[str | None]] = defaultdict(set)
    for e in episodes:
        assert len(e.versions_seen) <= 1, f"{e.robot_id} ran {e.versions_seen} in one episode"
        if e.versions_seen:
            assert e.versions_seen[0] == e.assigned_version
        if e.stage == "canary":
            cohorts[(e.robot_id, e.rollout_id)].add(e.cohort)
    assert all(len(c) == 1 for c in cohorts.values()), cohorts  # sticky cohorts


def test_good_candidate_goes_through_every_stage_and_becomes_champion(fleet: Fleet, tmp_path: Path) -> None:
    config = RolloutConfig(
        shadow_min_episodes=2,
        shadow_max_action_mse=1e6,
        canary_percent=75,  # 4 robots: an empty cohort (0.25^4) is rare; see docs/rollouts.md
        canary_min_episodes=3,
        canary_max_episodes=40,
        full_min_episodes=3,
        success_margin=0.9,  # two random policies: the test is about the mechanics, not skill
        confidence=0.6,
        latency_p95_budget_ms=20_000,
    )
    info = fleet.admin.start_rollout(StartRollout(candidate="2", config=config, reason="e2e"))
    assert info.stage == "shadow" and info.champion_version == "1"
    episodes = drive(fleet, 8, tmp_path / "spool")
    final = wait_for(fleet, info.rollout_id, {"completed", "rolled_back"})
    check_whole_episodes(episodes)
    path = [(d.action, d.to_stage) for d in final.decisions]
    assert path[0] == ("start", "shadow")
    assert (
        ("advance", "canary") in path
        and ("advance", "full") in path
        and path[-1] == ("complete", "completed")
    )
    assert any(e.shadowed for e in episodes if e.stage == "shadow")
    assert {e.assigned_version for e in episodes if e.stage == "full"} == {f"{MODEL}/2"}
    promoted = next(d for d in final.decisions if d.to_stage == "full")
    assert promoted.evidence is not None and promoted.evidence.candidate.episodes >= 3
    assert fleet.registry.get_model_version_by_alias(MODEL, "champion").version in (2, "2")
    assert fleet.registry.get_model_version_by_alias(MODEL, "previous").version in (1, "1")
    # Robots now get version 2 outside any rollout.
    robot = httpx.get(
        f"{fleet.api_url}/v1/robots/me/policy", headers={"Authorization": f"Bearer {fleet.tokens['r0']}"}
    ).json()
    assert robot["version"] == f"{MODEL}/2" and robot["rollout_id"] is None


def test_corrupted_action_head_is_rolled_back_automatically(fleet: Fleet, tmp_path: Path) -> None:
    config = RolloutConfig(
        shadow=False,
        canary_percent=75,  # 4 robots: an empty cohort (0.25^4) is rare; see docs/rollouts.md
        canary_min_episodes=3,
        guardrail_min_episodes=2,
        success_margin=0.9,
        latency_p95_budget_ms=20_000,
    )
    champion = str(fleet.registry.get_model_version_by_alias(MODEL, "champion").version)
    info = fleet.admin.start_rollout(StartRollout(candidate="3", config=config, reason="planted regression"))
    assert info.stage == "canary"
    episodes = drive(fleet, 5, tmp_path / "spool")
    final = wait_for(fleet, info.rollout_id, {"rolled_back"})
    check_whole_episodes(episodes)
    assert final.stage == "rolled_back", [d.reason for d in final.decisions]
    rollback = final.decisions[-1]
    assert rollback.action == "rollback" and "error" in rollback.reason
    assert rollback.evidence is not None and rollback.evidence.candidate.errors > 0
    # Bounded: the rollback came after at most a few candidate episodes, not a whole canary.
    assert rollback.evidence.candidate.episodes <= config.guardrail_min_episodes + len(fleet.tokens)
    assert str(fleet.registry.get_model_version_by_alias(MODEL, "champion").version) == champion
    with pytest.raises(mlflow.exceptions.MlflowException):
        fleet.registry.get_model_version_by_alias(MODEL, "candidate")


def test_a_candidate_worse_on_the_robots_outcomes_is_rolled_back_by_the_success_gate(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Not a broken head: the candidate answers every request with finite actions, on time, but
    never reaches the goal, while the champion (the scripted expert) does. The statistical gate
    on the robots' own outcomes rolls it back; no error or latency guardrail is involved."""
    fleet.registry.set_registered_model_alias(MODEL, "champion", "4")
    config = RolloutConfig(
        shadow=False,
        canary_percent=50,
        canary_min_episodes=4,
        canary_max_episodes=40,
        guardrail_min_episodes=4,
        success_margin=0.2,
        confidence=0.9,
        min_success=0.5,  # the verdict when the cohort draw leaves no champion robot
        latency_p95_budget_ms=20_000,
    )
    info = fleet.admin.start_rollout(StartRollout(candidate="5", config=config, reason="worse policy"))
    episodes = drive(fleet, 5, tmp_path / "spool", tasks=("reach-v3",), max_steps=50)
    final = wait_for(fleet, info.rollout_id, {"rolled_back", "completed"})
    check_whole_episodes(episodes)
    assert final.stage == "rolled_back", [d.reason for d in final.decisions]
    rollback = final.decisions[-1]
    assert "success upper bound" in rollback.reason, rollback.reason
    evidence = rollback.evidence
    assert evidence is not None
    assert evidence.candidate.errors == 0 and evidence.candidate.successes == 0
    assert evidence.candidate.episodes >= config.guardrail_min_episodes
    if evidence.champion.episodes:
        assert evidence.champion.successes > 0  # the expert did reach the goal
    champion_runs = [e for e in episodes if e.assigned_version == f"{MODEL}/4"]
    assert champion_runs and any(e.success for e in champion_runs)
    assert str(fleet.registry.get_model_version_by_alias(MODEL, "champion").version) == "4"
