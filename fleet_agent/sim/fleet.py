"""Runs simulated robots, one process each, recording scripted-expert episodes into spools.

Each robot process reports every finished episode's manifest on a queue; the caller decides
what to do with the bundle (upload it, read it back). Processes are spawned, not forked, so
each owns its own MuJoCo/EGL context.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wamfleet.platform.contracts.episode import EpisodeManifest


@dataclass(frozen=True)
class SimRobotPlan:
    robot_id: str
    tasks: tuple[str, ...]
    episodes: int
    seed: int
    image_size: int = 96
    noise: float = 0.1
    max_steps: int = 150


@dataclass(frozen=True)
class RecordedEpisode:
    robot_id: str
    directory: Path
    manifest: EpisodeManifest


def _robot_main(plan: SimRobotPlan, spool: str, out: Any) -> None:
    from wamfleet.fleet_agent.sim.expert import record_expert_episode
    from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot, layout_seed

    robots: dict[str, MetaWorldRobot] = {}
    try:
        for episode in range(plan.episodes):
            task = plan.tasks[episode % len(plan.tasks)]
            if task not in robots:
                robots[task] = MetaWorldRobot(task, image_size=plan.image_size)
            seed = layout_seed(plan.seed, plan.robot_id, episode)
            directory = Path(spool) / plan.robot_id / f"episode-{episode:05d}"
            manifest = record_expert_episode(
                robots[task],
                directory,
                robot_id=plan.robot_id,
                seed=seed,
                max_steps=plan.max_steps,
                noise=plan.noise,
            )
            out.put(("episode", plan.robot_id, str(directory), manifest.model_dump_json()))
        out.put(("done", plan.robot_id, "", ""))
    except BaseException as exc:
        out.put(("error", plan.robot_id, "", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for robot in robots.values():
            robot.close()


def run_sim_fleet(
    plans: Sequence[SimRobotPlan], spool: Path, timeout_s: float = 1800.0
) -> Iterator[RecordedEpisode]:
    """Yields each episode as soon as its robot finishes it; raises if any robot fails."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_robot_main, args=(p, str(spool), out), daemon=True) for p in plans]
    for proc in procs:
        proc.start()
    pending = {p.robot_id for p in plans}
    try:
        while pending:
            try:
                kind, robot_id, directory, payload = out.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"robots {sorted(pending)} sent nothing for {timeout_s:.0f}s") from None
            if kind == "episode":
                yield RecordedEpisode(robot_id, Path(directory), EpisodeManifest.model_validate_json(payload))
            elif kind == "done":
                pending.discard(robot_id)
            else:
                raise RuntimeError(f"robot {robot_id} failed: {payload}")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
