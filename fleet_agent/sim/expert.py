"""Records scripted-expert episodes from a simulated robot through the ordinary EpisodeWriter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.fleet_agent.sim.tasks import instruction_for
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, Outcome


def expert_writer_kwargs(
    robot: MetaWorldRobot, robot_id: str, seed: int, site: str | None = "sim"
) -> dict[str, object]:
    """What an expert episode's writer is told: who, what task, which layout."""
    return {
        "robot_id": robot_id,
        "embodiment": robot.embodiment,
        "task": instruction_for(robot.task),
        "source": EpisodeSource.scripted,
        "site": site,
        "tags": {"env": robot.task, "layout-seed": str(seed)},
        "started_at": datetime.now(UTC),
    }


def run_expert_episode(
    robot: MetaWorldRobot,
    writer: EpisodeWriter | None,
    *,
    seed: int,
    max_steps: int = 150,
    noise: float = 0.1,
    frames_after_success: int = 4,
    noise_seed: int | None = None,
) -> Outcome:
    """Runs the expert with action noise until success (plus a few frames) or `max_steps`.

    The frame at step t pairs the observation before the action with the action taken,
    as LeRobot records it (a video-only writer gets no actions; without a writer nothing is
    recorded, only measured). The noise is drawn from `noise_seed` (default: the layout `seed`),
    so one layout can be recorded several times with different noise.
    """
    rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    obs = robot.reset(seed)
    progress = 0.0
    success_at: int | None = None
    for step in range(max_steps):
        action = robot.expert_action(rng, noise)
        result = robot.step(action)
        if writer is not None:
            recorded = action if writer.has_actions else None
            writer.add_frame(obs.images, obs.state, recorded, reward=result.reward, success=result.success)
        progress = max(progress, result.progress)
        obs = result
        if result.success and success_at is None:
            success_at = step
        if success_at is not None and step - success_at >= frames_after_success:
            break
    return Outcome(success=success_at is not None, progress=progress)


def record_expert_episode(
    robot: MetaWorldRobot,
    directory: Path,
    *,
    robot_id: str,
    seed: int,
    max_steps: int = 150,
    noise: float = 0.1,
    site: str | None = "sim",
    frames_after_success: int = 4,
    noise_seed: int | None = None,
    video_only: bool = False,
) -> EpisodeManifest:
    """One expert episode written to `directory` as a finished bundle; `video_only`: without its
    actions (what a video of someone else doing the task offers)."""
    kwargs = expert_writer_kwargs(robot, robot_id, seed, site)
    with EpisodeWriter(directory, video_only=video_only, **kwargs) as writer:  # type: ignore[arg-type]
        outcome = run_expert_episode(
            robot,
            writer,
            seed=seed,
            max_steps=max_steps,
            noise=noise,
            frames_after_success=frames_after_success,
            noise_seed=noise_seed,
        )
        return writer.close(outcome)
