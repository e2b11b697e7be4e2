"""Simulated fleets: one process per Meta-World robot, recording into its own spool.

Each robot records scripted-expert episodes exactly as a real robot would: through its spool
and, when it has a token, through its own uploader and the platform API. Every finished or
uploaded episode is reported on a queue. Processes are spawned, not forked, so each owns its
MuJoCo/EGL context.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from wamfleet.platform.contracts.episode import EpisodeManifest

REPETITIVE_LAYOUTS = 2


class FleetMode(StrEnum):
    """`diverse`: every episode a new layout, tasks rotating; `repetitive`: a quarter of the
    tasks (at least one), each on 2 fixed layouts. Same number of episodes either way."""

    diverse = "diverse"
    repetitive = "repetitive"


def layout_seed(base_seed: int, robot_id: str, episode: int) -> int:
    """Deterministic, well-spread object-layout seed per (fleet seed, robot, episode) for data
    collection. Always even: evaluation layouts (`eval_layout_seed`) are always odd, so no
    evaluation ever runs on a layout the fleet recorded, whatever the seeds."""
    return zlib.crc32(f"{base_seed}/{robot_id}/{episode}".encode()) & 0x7FFFFFFE


def eval_layout_seed(base_seed: int, task: str, episode: int) -> int:
    """The held-out layout of evaluation episode `episode` of `task`: always odd (see layout_seed)."""
    return zlib.crc32(f"eval/{base_seed}/{task}/{episode}".encode()) & 0x7FFFFFFF | 1


@dataclass(frozen=True)
class AgentLink:
    """How a simulated robot reaches the platform: the same settings a real robot has."""

    api_url: str
    token: str
    bandwidth_limit: int = 0
    retention_s: float = 0.0


@dataclass(frozen=True)
class SimRobotPlan:
    robot_id: str
    episodes: tuple[tuple[str, int], ...]  # (Meta-World task, layout seed) per episode
    image_size: int = 96
    noise: float = 0.1
    max_steps: int = 150
    agent: AgentLink | None = None


def plan_fleet(
    robot_ids: Sequence[str], episodes: int, tasks: Sequence[str], mode: FleetMode, seed: int
) -> dict[str, tuple[tuple[str, int], ...]]:
    """Which task and layout each robot records, episode by episode."""
    plans: dict[str, tuple[tuple[str, int], ...]] = {}
    if mode is FleetMode.diverse:
        for k, robot_id in enumerate(robot_ids):
            plans[robot_id] = tuple(
                (tasks[(k + e) % len(tasks)], layout_seed(seed, robot_id, e)) for e in range(episodes)
            )
        return plans
    few = list(tasks[: max(1, len(tasks) // 4)])
    layouts = {t: [layout_seed(seed, t, i) for i in range(REPETITIVE_LAYOUTS)] for t in few}
    for k, robot_id in enumerate(robot_ids):
        chosen = []
        for e in range(episodes):
            task = few[(k + e) % len(few)]
            chosen.append((task, layouts[task][(k + e) % REPETITIVE_LAYOUTS]))
        plans[robot_id] = tuple(chosen)
    return plans


@dataclass(frozen=True)
class FleetEvent:
    kind: str  # "recorded" | "uploaded"
    robot_id: str
    directory: Path
    manifest: EpisodeManifest


def _robot_main(plan: SimRobotPlan, spool_root: str, out: Any) -> None:
    from wamfleet.fleet_agent.client import PlatformClient
    from wamfleet.fleet_agent.sim.expert import expert_writer_kwargs, run_expert_episode
    from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
    from wamfleet.fleet_agent.spool import Spool
    from wamfleet.fleet_agent.uploader import Uploader

    spool = Spool(Path(spool_root) / plan.robot_id)
    spool.recover_recordings()
    uploader = None
    if plan.agent is not None:
        client = PlatformClient(plan.agent.api_url, plan.agent.token)
        uploader = Uploader(
            spool, client, bandwidth_limit=plan.agent.bandwidth_limit, retention_s=plan.agent.retention_s
        )
    robots: dict[str, MetaWorldRobot] = {}
    manifests: dict[str, EpisodeManifest] = {}
    try:
        for task, seed in plan.episodes:
            if task not in robots:
                robots[task] = MetaWorldRobot(task, image_size=plan.image_size)
            robot = robots[task]
            writer = spool.start_recording(**expert_writer_kwargs(robot, plan.robot_id, seed))
            with writer:
                outcome = run_expert_episode(
                    robot, writer, seed=seed, max_steps=plan.max_steps, noise=plan.noise
                )
                manifest = spool.finish(writer, outcome)
            ready = spool.dir("ready", str(manifest.episode_id))
            manifests[ready.name] = manifest
            out.put(("recorded", plan.robot_id, (str(ready), manifest.model_dump_json())))
            if uploader is not None:
                report = uploader.run_once()
                for name in report.committed:
                    done = manifests[name]
                    out.put(
                        (
                            "uploaded",
                            plan.robot_id,
                            (str(spool.dir("uploaded", name)), done.model_dump_json()),
                        )
                    )
                if report.rejected:
                    raise RuntimeError(f"platform refused episodes {report.rejected}")
        out.put(("done", plan.robot_id, None))
    except BaseException as exc:
        out.put(("error", plan.robot_id, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for robot in robots.values():
            robot.close()


def run_robot_processes(
    target: Callable[[Any, str, Any], None], plans: Sequence[Any], spool_root: Path, timeout_s: float
) -> Iterator[tuple[str, str, Any]]:
    """One spawned process per plan running `target(plan, spool_root, queue)`; yields each robot's
    (kind, robot_id, payload) messages until every robot sent `done`; raises on an `error`."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(p, str(spool_root), out), daemon=True) for p in plans]
    for proc in procs:
        proc.start()
    pending = {p.robot_id for p in plans}
    try:
        while pending:
            try:
                kind, robot_id, payload = out.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"robots {sorted(pending)} sent nothing for {timeout_s:.0f}s") from None
            if kind == "done":
                pending.discard(robot_id)
            elif kind == "error":
                raise RuntimeError(f"robot {robot_id} failed: {payload}")
            else:
                yield kind, robot_id, payload
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def run_sim_fleet(
    plans: Sequence[SimRobotPlan], spool_root: Path, timeout_s: float = 1800.0
) -> Iterator[FleetEvent]:
    """Yields each robot's events as they happen; raises if any robot fails."""
    for kind, robot_id, (directory, manifest) in run_robot_processes(
        _robot_main, plans, spool_root, timeout_s
    ):
        yield FleetEvent(kind, robot_id, Path(directory), EpisodeManifest.model_validate_json(manifest))
