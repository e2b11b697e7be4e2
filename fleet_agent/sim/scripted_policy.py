"""A policy of known quality: Meta-World's scripted expert, competent in a given share of episodes.

Served by `wamfleet serve` like a WAM (serving/scripted.py), it lets a rollout be judged on a
real, known difference in outcomes: each episode (session) is driven by the expert with
probability `quality` (decided by a hash of the session id, so a retried request gets the same
answer), and otherwise holds still. The expert reads only the robot's state (Meta-World's
39-d observation), so nothing about the simulator's internals crosses the wire.
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wamfleet.fleet_agent.sim.tasks import instruction_for
from wamfleet.platform.contracts.protocol import PolicyMetadata

KIND = "scripted-expert"
POLICY_FILE = "policy.json"


@dataclass(frozen=True)
class ScriptedExpert:
    quality: float  # share of episodes the expert drives; the rest hold still
    tasks: tuple[str, ...]
    seed: int = 0
    actions_per_chunk: int = 8
    video_frames_per_chunk: int = 4

    def competent(self, session_id: str) -> bool:
        draw = zlib.crc32(f"{self.seed}/{session_id}".encode()) / 2**32
        return draw < self.quality

    def task(self, instruction: str) -> str:
        for task in self.tasks:
            if instruction_for(task) == instruction or task == instruction:
                return task
        raise ValueError(f"instruction: {instruction!r} is none of this expert's tasks {list(self.tasks)}")

    def metadata(self, version: str) -> PolicyMetadata:
        from wamfleet.fleet_agent.sim.sawyer import DEFAULT_CAMERAS, sawyer_embodiment

        spec = sawyer_embodiment()
        return PolicyMetadata(
            policy_version=version,
            embodiment=spec.name,
            cameras=list(DEFAULT_CAMERAS),
            state_dim=spec.state_dim,
            action_dim=spec.action_dim,
            actions_per_chunk=self.actions_per_chunk,
            action_rate_hz=spec.fps,
            video_frames_per_chunk=self.video_frames_per_chunk,
        )

    def chunk(self, session_id: str, instruction: str, state: NDArray[np.float32]) -> NDArray[np.float32]:
        """The expert's action at this state for the whole chunk (the runner asks again halfway),
        or zeros (hold still) in an episode the expert does not drive."""
        from wamfleet.fleet_agent.sim.metaworld_robot import expert_for
        from wamfleet.fleet_agent.sim.sawyer import ACTION_NAMES

        task = self.task(instruction)
        if not self.competent(session_id):
            return np.zeros((self.actions_per_chunk, len(ACTION_NAMES)), np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the experts' gains exceed the bounds
            action = np.asarray(expert_for(task).get_action(state.astype(np.float64)), np.float64)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        return np.repeat(action[None], self.actions_per_chunk, axis=0)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ScriptedExpert:
        if record.get("kind") != KIND:
            raise ValueError(f"{POLICY_FILE}: kind {record.get('kind')!r} is not {KIND!r}")
        quality = float(record["quality"])
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality: {quality} is not within [0, 1]")
        return cls(quality=quality, tasks=tuple(record["tasks"]), seed=int(record.get("seed", 0)))


def write_scripted_policy(
    directory: Path, quality: float, tasks: tuple[str, ...], *, seed: int = 0, version: str | None = None
) -> Path:
    """A policy directory `wamfleet serve` (and the registry) take like a WAM's."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {"kind": KIND, "quality": quality, "tasks": list(tasks), "seed": seed, "metadata": {}}
    if version is not None:
        record["metadata"] = {"version": version}
    ScriptedExpert.from_record(record)  # refuse a bad one here, not when it is served
    (directory / POLICY_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return directory
