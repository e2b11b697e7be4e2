"""Simulated robots that run whatever the platform assigns them, one whole episode at a time.

Each robot process loops: ask `GET /v1/robots/me/policy` (only here, between episodes), drive
one autonomous episode with the assigned endpoint (mirroring to a shadow endpoint when told),
upload it through its own spool and uploader, report what happened. A robot therefore never
switches version inside an episode; each report says which versions answered its chunks, so
tests can check exactly that.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wamfleet.fleet_agent.sim.fleet import layout_seed, run_robot_processes

if TYPE_CHECKING:
    from wamfleet.fleet_agent.shadow import ShadowedClient


@dataclass(frozen=True)
class AssignedRobotPlan:
    robot_id: str
    api_url: str
    token: str
    tasks: tuple[str, ...]
    episodes: int
    seed: int = 0
    image_size: int = 64
    max_steps: int = 60
    idle_wait_s: float = 0.5  # when no policy is assigned yet
    until_rollout_ends: int = (
        0  # > 0: after `episodes`, keep driving while a rollout is active, up to this many
    )


@dataclass(frozen=True)
class AssignedEpisode:
    robot_id: str
    assigned_version: str | None
    rollout_id: str | None
    stage: str | None
    cohort: str | None
    shadowed: bool
    versions_seen: tuple[str, ...]  # versions that answered this episode's chunks
    episode_id: str | None
    success: bool
    task: str = ""
    progress: float = 0.0
    requests: int = 0
    failed_requests: int = 0


def _end_tags(rollout_tags: dict[str, str], mirror: ShadowedClient | None, _stats: object) -> dict[str, str]:
    return rollout_tags | (mirror.drain().tags() if mirror is not None else {})


def _robot_main(plan: AssignedRobotPlan, spool_root: str, out: Any) -> None:
    from wamfleet.fleet_agent.client import PlatformClient
    from wamfleet.fleet_agent.policy_client import PolicyClient, open_policy_client
    from wamfleet.fleet_agent.shadow import ShadowedClient
    from wamfleet.fleet_agent.sim.drive import drive_episode, policy_cameras, reachable_metadata
    from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
    from wamfleet.fleet_agent.spool import Spool
    from wamfleet.fleet_agent.uploader import Uploader

    platform = PlatformClient(plan.api_url, plan.token)
    spool = Spool(Path(spool_root) / plan.robot_id)
    uploader = Uploader(spool, platform)
    clients: dict[str, PolicyClient] = {}
    robots: dict[str, MetaWorldRobot] = {}

    def client_for(endpoint: str) -> PolicyClient:
        if endpoint not in clients:
            clients[endpoint] = open_policy_client(endpoint, timeout_s=30.0)
        return clients[endpoint]

    try:
        done = 0
        while done < max(plan.episodes, plan.until_rollout_ends):
            assignment = platform.policy_assignment()  # an episode boundary: the only place to switch
            if done >= plan.episodes and assignment.rollout_id is None:
                break  # the rollout ended: this robot has seen it through
            if assignment.endpoint is None or assignment.version is None:
                time.sleep(plan.idle_wait_s)
                continue
            primary = client_for(assignment.endpoint)
            task = plan.tasks[done % len(plan.tasks)]
            if task not in robots:
                # An endpoint stopped between the assignment and now (a rollback) must not crash the
                # robot: it drives the episode holding safe actions and uploads it as a failure.
                robots[task] = MetaWorldRobot(
                    task, image_size=plan.image_size, cameras=policy_cameras(reachable_metadata(primary))
                )
            mirror = None
            if assignment.shadow is not None:
                mirror = ShadowedClient(primary, client_for(assignment.shadow.url), assignment.shadow.version)
            rollout_tags = {"rollout.id": assignment.rollout_id} if assignment.rollout_id else {}
            result = drive_episode(
                mirror or primary,
                robots[task],
                spool,
                robot_id=plan.robot_id,
                seed=layout_seed(plan.seed, f"{plan.robot_id}/assigned/{task}", done),
                max_steps=plan.max_steps,
                end_tags=functools.partial(_end_tags, rollout_tags, mirror),
                assigned_version=assignment.version,
            )
            if mirror is not None:
                mirror.close()
            report = uploader.run_once()
            if report.rejected:
                raise RuntimeError(f"platform refused episodes {report.rejected}")
            out.put(
                (
                    "episode",
                    plan.robot_id,
                    AssignedEpisode(
                        robot_id=plan.robot_id,
                        assigned_version=assignment.version,
                        rollout_id=assignment.rollout_id,
                        stage=assignment.stage,
                        cohort=assignment.cohort,
                        shadowed=mirror is not None,
                        versions_seen=tuple(result.stats.policy_versions),
                        episode_id=result.episode_id,
                        success=bool(result.outcome.success),
                        task=task,
                        progress=float(result.outcome.progress or 0.0),
                        requests=result.stats.requests,
                        failed_requests=len(result.stats.request_failures),
                    ),
                )
            )
            done += 1
        out.put(("done", plan.robot_id, None))
    except BaseException as exc:
        out.put(("error", plan.robot_id, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for robot in robots.values():
            robot.close()
        for client in clients.values():
            client.close()
        platform.close()


def run_assigned_fleet(
    plans: Sequence[AssignedRobotPlan], spool_root: Path, timeout_s: float = 900.0
) -> Iterator[AssignedEpisode]:
    """Runs one process per robot; yields every episode as it is uploaded; raises if a robot fails."""
    for _kind, _robot_id, episode in run_robot_processes(_robot_main, plans, spool_root, timeout_s):
        yield episode
