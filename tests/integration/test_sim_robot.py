"""The simulated robots record real Meta-World episodes through the ordinary writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wamfleet.fleet_agent.episode_io import EpisodeReader
from wamfleet.fleet_agent.sim.expert import record_expert_episode
from wamfleet.fleet_agent.sim.fleet import SimRobotPlan, run_sim_fleet
from wamfleet.fleet_agent.sim.metaworld_robot import STATE_NAMES, MetaWorldRobot, layout_seed


def test_expert_episode_succeeds_and_round_trips(tmp_path: Path) -> None:
    robot = MetaWorldRobot("reach-v3", image_size=64)
    try:
        manifest = record_expert_episode(robot, tmp_path / "ep", robot_id="sim-1", seed=3, max_steps=150)
    finally:
        robot.close()
    assert manifest.outcome.success is True
    assert manifest.outcome.progress == 1.0
    assert manifest.source == "scripted"
    assert manifest.tags == {"env": "reach-v3", "layout-seed": "3"}
    with EpisodeReader(tmp_path / "ep") as reader:
        assert reader.states().shape == (manifest.num_frames, len(STATE_NAMES))
        actions = reader.actions()
        assert actions is not None and np.all(np.abs(actions) <= 1.0)
        frame = reader.frame(0)
        assert frame["exterior"].shape == (64, 64, 3)
        # Upright: the floor (bottom rows) differs from the backdrop (top rows).
        assert abs(float(frame["exterior"][:8].mean()) - float(frame["exterior"][-8:].mean())) > 5


def test_layouts_differ_by_seed_and_repeat_for_the_same_seed() -> None:
    robot = MetaWorldRobot("push-v3", image_size=32)
    try:
        a = robot.reset(1).state
        b = robot.reset(2).state
        c = robot.reset(1).state
    finally:
        robot.close()
    assert not np.allclose(a[4:7], b[4:7])
    np.testing.assert_allclose(a, c)
    assert layout_seed(0, "sim-1", 0) != layout_seed(0, "sim-2", 0)


def test_unknown_task_and_camera_are_refused() -> None:
    with pytest.raises(ValueError, match="task: unknown"):
        MetaWorldRobot("fly-v3")
    with pytest.raises(ValueError, match="cameras: unknown"):
        MetaWorldRobot("reach-v3", cameras=("belly",))


def test_fleet_runs_one_process_per_robot(tmp_path: Path) -> None:
    plans = [
        SimRobotPlan(robot_id="sim-1", tasks=("reach-v3",), episodes=2, seed=0, image_size=32, max_steps=60),
        SimRobotPlan(robot_id="sim-2", tasks=("push-v3",), episodes=1, seed=0, image_size=32, max_steps=60),
    ]
    episodes = list(run_sim_fleet(plans, tmp_path, timeout_s=300))
    assert sorted(e.robot_id for e in episodes) == ["sim-1", "sim-1", "sim-2"]
    assert len({e.manifest.episode_id for e in episodes}) == 3
    for e in episodes:
        assert (e.directory / "manifest.json").exists()


def test_fleet_surfaces_a_robot_failure(tmp_path: Path) -> None:
    plans = [SimRobotPlan(robot_id="sim-1", tasks=("fly-v3",), episodes=1, seed=0)]
    with pytest.raises(RuntimeError, match="robot sim-1 failed: ValueError: task: unknown"):
        list(run_sim_fleet(plans, tmp_path, timeout_s=300))
