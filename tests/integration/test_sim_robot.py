"""The simulated robots record real Meta-World episodes through the ordinary writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.sim.expert import record_expert_episode
from wamfleet.fleet_agent.sim.fleet import FleetMode, SimRobotPlan, layout_seed, plan_fleet, run_sim_fleet
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.fleet_agent.sim.sawyer import STATE_NAMES

# MuJoCo robots in their own processes: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow


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


def test_fleet_runs_one_process_per_robot_into_its_own_spool(tmp_path: Path) -> None:
    plans = [
        SimRobotPlan(
            robot_id="sim-1", episodes=(("reach-v3", 1), ("reach-v3", 2)), image_size=32, max_steps=60
        ),
        SimRobotPlan(robot_id="sim-2", episodes=(("push-v3", 1),), image_size=32, max_steps=60),
    ]
    events = list(run_sim_fleet(plans, tmp_path, timeout_s=300))
    assert sorted(e.robot_id for e in events) == ["sim-1", "sim-1", "sim-2"]
    assert {e.kind for e in events} == {"recorded"}
    assert len({e.manifest.episode_id for e in events}) == 3
    for e in events:
        assert e.directory.parent == tmp_path / e.robot_id / "ready"
        assert (e.directory / "manifest.json").exists()


def test_fleet_surfaces_a_robot_failure(tmp_path: Path) -> None:
    plans = [SimRobotPlan(robot_id="sim-1", episodes=(("fly-v3", 0),))]
    with pytest.raises(RuntimeError, match="robot sim-1 failed: ValueError: task: unknown"):
        list(run_sim_fleet(plans, tmp_path, timeout_s=300))


def test_diverse_and_repetitive_plans_have_equal_volume() -> None:
    tasks = ("reach-v3", "push-v3", "door-open-v3", "drawer-open-v3")
    robots = ["sim-1", "sim-2", "sim-3"]
    diverse = plan_fleet(robots, 8, tasks, FleetMode.diverse, seed=0)
    repetitive = plan_fleet(robots, 8, tasks, FleetMode.repetitive, seed=0)
    assert sum(map(len, diverse.values())) == sum(map(len, repetitive.values())) == 24
    diverse_eps = [e for plan in diverse.values() for e in plan]
    repetitive_eps = [e for plan in repetitive.values() for e in plan]
    assert {t for t, _ in diverse_eps} == set(tasks)
    assert len(set(diverse_eps)) == 24  # every episode a new (task, layout)
    assert {t for t, _ in repetitive_eps} == {"reach-v3"}
    assert len(set(repetitive_eps)) == 2  # two layouts, repeated
