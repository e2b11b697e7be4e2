"""A policy trained from bundles loads into the serving engine and acts in the robot's units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.sim.expert import record_expert_episode
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.model.policy import load_policy
from wamfleet.pipelines.train_local import train_policy
from wamfleet.serving.engine import InferRequest, PolicyEngine

# Trains and serves a policy: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

torch.set_num_threads(1)


def test_trained_policy_serves(tmp_path: Path) -> None:
    robot = MetaWorldRobot("push-v3", image_size=48)
    try:
        dirs = [tmp_path / f"e{i}" for i in range(2)]
        for i, d in enumerate(dirs):
            record_expert_episode(robot, d, robot_id="sim-1", seed=i, max_steps=50)
    finally:
        robot.close()
    steps: list[int] = []
    result = train_policy(
        dirs,
        tmp_path / "policy",
        robot.embodiment,
        steps=20,
        metadata={"version": "t1"},
        on_step=lambda s, _: steps.append(s),
    )
    assert steps == list(range(1, 21))
    assert result.windows >= 2
    assert result.losses[-1] < result.losses[0]
    policy = load_policy(result.policy_dir)
    assert policy.metadata == {"version": "t1"}
    engine = PolicyEngine(policy, version="t1")
    try:
        with EpisodeReader(dirs[0]) as reader:
            frame = reader.frame(0)
            images = np.stack([frame["exterior"], frame["wrist"]])
            out = engine.infer(InferRequest("s", reader.manifest.task, images, reader.states()[0]))
            recorded = reader.actions()
        assert out.actions.shape == (8, 4)
        assert recorded is not None
        # Denormalised with the data's q01/q99: the same scale as the recorded actions.
        assert np.abs(out.actions).max() < 5 * np.abs(recorded).max() + 1
    finally:
        engine.close()


def test_max_windows_and_config_overrides_shape_the_training(tmp_path: Path) -> None:
    """Equal data for unequal datasets (benchmarks/efficacy.py's diversity arms), and the
    action-only baseline through a config override."""
    robot = MetaWorldRobot("reach-v3", image_size=48)
    try:
        dirs = [tmp_path / f"e{i}" for i in range(2)]
        for i, d in enumerate(dirs):
            record_expert_episode(
                robot, d, robot_id="sim-1", seed=2 * i, max_steps=60, frames_after_success=60
            )
    finally:
        robot.close()
    result = train_policy(
        dirs,
        tmp_path / "policy",
        robot.embodiment,
        steps=2,
        max_windows=2,
        config_overrides={"video_loss_weight": 0.0},
        lr_schedule="cosine",
    )
    assert result.windows == 2  # 60-frame episodes hold 4 windows each; 2 were drawn
    assert load_policy(result.policy_dir).config.video_loss_weight == 0.0
