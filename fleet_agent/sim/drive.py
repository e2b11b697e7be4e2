"""Simulated robots driven by a served policy: autonomous episodes and closed-loop evaluation.

A Meta-World arm runs under a policy server through the same `ActionChunkRunner` a real robot
uses, on a simulated clock (the physics waits for the server; replies land at the step their
latency says). `drive_episode` records what happened into the spool as an autonomous episode
naming the policy version that acted, ready for `wamfleet agent run` to upload;
`evaluate_closed_loop` only measures, on layouts disjoint from data collection.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from wamfleet.fleet_agent.chunk_runner import ActionChunkRunner, EpisodeRunStats, Merge, RunFigures
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.policy_client import PolicyClient, PolicyError, open_policy_client
from wamfleet.fleet_agent.sim.fleet import eval_layout_seed, layout_seed
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot, StepResult
from wamfleet.fleet_agent.sim.sawyer import CAMERAS, DEFAULT_CAMERAS
from wamfleet.fleet_agent.sim.tasks import instruction_for
from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.contracts.episode import EpisodeSource, Outcome
from wamfleet.platform.contracts.protocol import PolicyMetadata
from wamfleet.platform.contracts.rollout import TAG_ERRORS, TAG_LATENCY_P95_MS, TAG_REQUESTS

log = logging.getLogger(__name__)

# The writer checks the manifest's fields when a recording starts, and an autonomous episode
# must name its policy; the real version (of the chunks that ran) replaces this at `finish`.
PENDING_VERSION = "pending"


class PolicyDrivenArm:
    """A MetaWorldRobot as the runner's `Robot`, recording each executed step if given a writer."""

    def __init__(
        self, robot: MetaWorldRobot, writer: EpisodeWriter | None = None, frames_after_success: int = 4
    ) -> None:
        self.robot = robot
        self.writer = writer
        self.frames_after_success = frames_after_success
        self.steps = 0
        self.success_at: int | None = None
        self.progress = 0.0
        self._obs: StepResult | None = None

    def reset(self, seed: int) -> None:
        self._obs = self.robot.reset(seed)
        self.steps = 0
        self.success_at = None
        self.progress = 0.0

    def observe(self) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        assert self._obs is not None, "reset the arm first"
        images = np.stack([self._obs.images[name] for name in self.robot.cameras])
        return images, self._obs.state

    def act(self, action: NDArray[np.float32]) -> None:
        assert self._obs is not None, "reset the arm first"
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        result = self.robot.step(action)
        if self.writer is not None:  # the frame pairs the observation with the action taken from it
            self.writer.add_frame(
                self._obs.images, self._obs.state, action, reward=result.reward, success=result.success
            )
        if result.success and self.success_at is None:
            self.success_at = self.steps
        self.progress = max(self.progress, result.progress)
        self._obs = result
        self.steps += 1

    def done(self) -> bool:
        """Success, plus a few frames after it (as the expert episodes end)."""
        return self.success_at is not None and self.steps - 1 - self.success_at >= self.frames_after_success

    @property
    def outcome(self) -> Outcome:
        return Outcome(success=self.success_at is not None, progress=self.progress)


def reachable_metadata(client: PolicyClient) -> PolicyMetadata | None:
    try:
        return client.metadata()
    except PolicyError as exc:  # unreachable now, or REST (known after the first reply)
        log.debug("policy metadata not available before the episode: %s", exc)
        return None


def policy_cameras(meta: PolicyMetadata | None) -> tuple[str, ...]:
    """The sim cameras in the order the policy wants them; the default pair if it does not say."""
    if meta is None or not set(meta.cameras) <= set(CAMERAS):
        return DEFAULT_CAMERAS
    return tuple(meta.cameras)


def _runner(
    client: PolicyClient, arm: PolicyDrivenArm, merge: Merge, realtime: bool = False
) -> ActionChunkRunner:
    spec = arm.robot.embodiment
    return ActionChunkRunner(
        client, arm, control_hz=spec.fps, action_dim=spec.action_dim, merge=merge, realtime=realtime
    )


@dataclass
class DriveResult:
    task: str
    seed: int
    session_id: str
    outcome: Outcome
    stats: EpisodeRunStats
    episode_id: str | None = None  # None: not recorded (the policy never answered)
    directory: Path | None = None

    @property
    def policy_version(self) -> str | None:
        return self.stats.policy_version


def runner_tags(stats: EpisodeRunStats) -> dict[str, str]:
    tags = {TAG_REQUESTS: str(stats.requests), TAG_ERRORS: str(len(stats.request_failures))}
    if stats.latencies_s:
        tags[TAG_LATENCY_P95_MS] = f"{float(np.percentile(stats.latencies_s, 95)) * 1000:.1f}"
    return tags


def drive_episode(
    client: PolicyClient,
    robot: MetaWorldRobot,
    spool: Spool,
    *,
    robot_id: str,
    seed: int,
    max_steps: int = 150,
    merge: Merge = "latest",
    site: str | None = "sim",
    end_tags: Callable[[EpisodeRunStats], dict[str, str]] | None = None,
    assigned_version: str | None = None,
) -> DriveResult:
    """One autonomous episode into the spool's ready/; discarded if no chunk ever arrived.

    The manifest's tags carry what the policy did (requests, failed requests, latency p95):
    the evidence a staged rollout gates on; `end_tags` adds more (a shadow's comparison). With an
    `assigned_version` (a rollout's assignment) an episode is kept even if that version never
    answered: a policy that only fails is exactly what the rollout must hear about."""
    meta = reachable_metadata(client)
    instruction = instruction_for(robot.task)
    writer = spool.start_recording(
        robot_id=robot_id,
        embodiment=robot.embodiment,
        task=instruction,
        source=EpisodeSource.autonomous,
        policy_version=meta.policy_version if meta is not None else PENDING_VERSION,
        site=site,
        tags={"env": robot.task, "layout-seed": str(seed), "merge": merge},
        started_at=datetime.now(UTC),
    )
    session_id = f"{robot_id}-{writer.episode_id}"
    with writer:
        arm = PolicyDrivenArm(robot, writer)
        arm.reset(seed)
        stats = _runner(client, arm, merge).run_episode(instruction, session_id, max_steps, arm.done)
        version = stats.policy_version or assigned_version
        if version is None or arm.steps == 0:
            writer.abort()  # the robot only held still: nothing a policy did, nothing to learn from
            return DriveResult(robot.task, seed, session_id, arm.outcome, stats)
        if len(stats.policy_versions) > 1:
            log.warning("episode %s ran chunks of %s", writer.episode_id, stats.policy_versions)
        tags = runner_tags(stats) | (end_tags(stats) if end_tags is not None else {})
        manifest = spool.finish(writer, arm.outcome, policy_version=version, tags=tags)
    episode_id = str(manifest.episode_id)
    return DriveResult(
        robot.task, seed, session_id, arm.outcome, stats, episode_id, spool.dir("ready", episode_id)
    )


def drive(
    endpoint: str,
    task: str,
    episodes: int,
    *,
    spool_dir: Path,
    robot_id: str,
    api_key: str | None = None,
    max_steps: int = 150,
    seed: int = 0,
    image_size: int = 96,
    merge: Merge = "latest",
    timeout_s: float = 5.0,
    on_episode: Callable[[DriveResult], None] | None = None,
) -> list[DriveResult]:
    """Drives `episodes` autonomous episodes of `task`, each on a new layout, into the spool."""
    spool = Spool(spool_dir)
    results = []
    client = open_policy_client(endpoint, api_key=api_key, timeout_s=timeout_s)
    try:
        robot = MetaWorldRobot(
            task, image_size=image_size, cameras=policy_cameras(reachable_metadata(client))
        )
        try:
            for episode in range(episodes):
                layout = layout_seed(seed, f"{robot_id}/autonomous/{task}", episode)
                result = drive_episode(
                    client, robot, spool, robot_id=robot_id, seed=layout, max_steps=max_steps, merge=merge
                )
                results.append(result)
                if on_episode is not None:
                    on_episode(result)
        finally:
            robot.close()
    finally:
        client.close()
    return results


@dataclass
class TaskReport:
    task: str
    episodes: int = 0
    successes: int = 0
    progress: list[float] = field(default_factory=list)
    safe_actions: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def mean_progress(self) -> float:
        return float(np.mean(self.progress)) if self.progress else 0.0


@dataclass
class ClosedLoopReport(RunFigures):
    tasks: dict[str, TaskReport]
    latencies_s: list[float] = field(default_factory=list)
    steps: int = 0
    elapsed_s: float = 0.0
    target_rate_hz: float = 0.0
    requests: int = 0
    chunks: int = 0
    safe_actions: int = 0
    policy_versions: list[str] = field(default_factory=list)
    clock: Literal["wall", "simulated"] = "simulated"
    overruns: int = 0  # wall clock only: steps that took longer than a control period


def evaluate_closed_loop(
    endpoint: str | PolicyClient,
    tasks: Sequence[str],
    episodes: int,
    seed: int = 0,
    *,
    api_key: str | None = None,
    max_steps: int = 150,
    image_size: int = 96,
    merge: Merge = "latest",
    timeout_s: float = 5.0,
    on_episode: Callable[[DriveResult], None] | None = None,
    realtime: bool = False,
) -> ClosedLoopReport:
    """Success rate per task under the served policy, on held-out layouts; records nothing.

    `endpoint`: a URL, or an open client (kept open: it belongs to the caller). `realtime`:
    drive at the robot's rate on the wall clock, so the control rate is measured; otherwise a
    simulated clock (replies land at the step their measured latency says, nothing sleeps)."""
    report = ClosedLoopReport(
        {task: TaskReport(task) for task in tasks}, clock="wall" if realtime else "simulated"
    )
    owned = isinstance(endpoint, str)
    client: PolicyClient = (
        open_policy_client(endpoint, api_key=api_key, timeout_s=timeout_s)
        if isinstance(endpoint, str)
        else endpoint
    )
    try:
        cameras = policy_cameras(reachable_metadata(client))
        for task in tasks:
            robot = MetaWorldRobot(task, image_size=image_size, cameras=cameras)
            try:
                for episode in range(episodes):
                    layout = eval_layout_seed(seed, task, episode)
                    session_id = f"eval-{task}-{episode}-{uuid.uuid4().hex[:8]}"
                    arm = PolicyDrivenArm(robot)
                    arm.reset(layout)
                    stats = _runner(client, arm, merge, realtime).run_episode(
                        instruction_for(task), session_id, max_steps, arm.done
                    )
                    _add(report, report.tasks[task], arm, stats)
                    if on_episode is not None:
                        on_episode(DriveResult(task, layout, session_id, arm.outcome, stats))
            finally:
                robot.close()
    finally:
        if owned:
            client.close()
    return report


def _add(report: ClosedLoopReport, task: TaskReport, arm: PolicyDrivenArm, stats: EpisodeRunStats) -> None:
    task.episodes += 1
    task.successes += int(arm.success_at is not None)
    task.progress.append(arm.progress)
    task.safe_actions += stats.safe_actions
    report.latencies_s.extend(stats.latencies_s)
    report.steps += stats.steps
    report.elapsed_s += stats.elapsed_s
    report.target_rate_hz = stats.target_rate_hz or report.target_rate_hz
    report.requests += stats.requests
    report.chunks += stats.chunks
    report.safe_actions += stats.safe_actions
    report.overruns += stats.overruns
    report.policy_versions += [v for v in stats.policy_versions if v not in report.policy_versions]
