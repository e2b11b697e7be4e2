"""Evaluation never runs on a layout the fleet collected: seeds are disjoint by construction
(collection even, evaluation odd), and so are the object layouts they produce."""

from __future__ import annotations

import numpy as np
import pytest

from wamfleet.fleet_agent.sim.fleet import FleetMode, eval_layout_seed, layout_seed, plan_fleet

TASKS = ["reach-v3", "push-v3", "drawer-open-v3", "door-open-v3"]


def collection_seeds(seed: int) -> set[int]:
    robots = [f"sim-{k}" for k in range(8)]
    seeds = {
        s
        for mode in FleetMode
        for plan in plan_fleet(robots, 40, TASKS, mode, seed).values()
        for _, s in plan
    }
    # Autonomous and assigned episodes recorded by `agent drive` and the rollout robots.
    for robot in robots:
        for task in TASKS:
            seeds |= {layout_seed(seed, f"{robot}/autonomous/{task}", e) for e in range(40)}
            seeds |= {layout_seed(seed, f"{robot}/assigned/{task}", e) for e in range(40)}
    return seeds


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_evaluation_seeds_never_meet_collection_seeds(seed: int) -> None:
    collected = set().union(*(collection_seeds(s) for s in range(10)))
    evaluated = {eval_layout_seed(seed, task, e) for task in TASKS for e in range(200)}
    assert len(evaluated) == 4 * 200  # distinct
    assert not collected & evaluated
    assert all(s % 2 == 0 for s in collected) and all(s % 2 == 1 for s in evaluated)


def test_evaluation_layouts_differ_from_collected_ones() -> None:
    from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot

    robot = MetaWorldRobot("push-v3", image_size=16)
    try:

        def layout(seed: int) -> np.ndarray:
            state = robot.reset(seed).state
            return np.concatenate([state[4:7], state[-3:]])  # object and goal positions

        collected = [layout(layout_seed(0, "sim-0", e)) for e in range(5)]
        evaluated = [layout(eval_layout_seed(0, "push-v3", e)) for e in range(5)]
    finally:
        robot.close()
    for e in evaluated:
        assert min(float(np.abs(e - c).max()) for c in collected) > 1e-3
