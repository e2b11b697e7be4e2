"""A Meta-World Sawyer arm as a robot: cameras, a state vector, actions, and a scripted expert.

Rendering follows the settings that make 96x96 CPU frames cost ~10 ms instead of ~300 ms
(no shadows, reflections or multisampling; EGL). MuJoCo renders upside down: frames are flipped.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings
from dataclasses import dataclass
from typing import Any

import metaworld
import mujoco
import numpy as np
from metaworld.policies import ENV_POLICY_MAP
from numpy.typing import NDArray

from wamfleet.fleet_agent.sim.sawyer import (
    ACTION_NAMES,
    CAMERAS,
    DEFAULT_CAMERAS,
    STATE_NAMES,
    sawyer_embodiment,
)

# Meta-World's registries are untyped; goal-observable envs take a layout seed at construction.
_ENVS: dict[str, Any] = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE  # type: ignore[attr-defined]
_EXPERTS: dict[str, Any] = ENV_POLICY_MAP


@functools.cache
def expert_for(task: str) -> Any:
    """Meta-World's scripted expert for `task` (stateless: it acts on the observation alone)."""
    return _EXPERTS[task]()


def known_task(task: str) -> bool:
    return f"{task}-goal-observable" in _ENVS and task in _EXPERTS


@dataclass
class StepResult:
    images: dict[str, NDArray[np.uint8]]
    state: NDArray[np.float32]
    success: bool
    reward: float
    progress: float


class MetaWorldRobot:
    """One task's environment; every `reset(seed)` draws a new object layout from that seed."""

    def __init__(self, task: str, image_size: int = 96, cameras: tuple[str, ...] = DEFAULT_CAMERAS) -> None:
        if not known_task(task):
            raise ValueError(f"task: unknown Meta-World task {task!r}")
        unknown = set(cameras) - set(CAMERAS)
        if unknown:
            raise ValueError(f"cameras: unknown {sorted(unknown)}, choose from {sorted(CAMERAS)}")
        self.task = task
        self.cameras = cameras
        self.embodiment = sawyer_embodiment(image_size, cameras)
        self.env: Any = _ENVS[f"{task}-goal-observable"](seed=0)
        self.env.seeded_rand_vec = True
        self.expert: Any = _EXPERTS[task]()
        self.max_steps = int(self.env.max_path_length)
        model = self.env.model
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        self._renderer = mujoco.Renderer(model, image_size, image_size)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._obs: NDArray[np.float64] = np.zeros(len(STATE_NAMES))
        self._initial_distance = 1.0

    def render(self) -> dict[str, NDArray[np.uint8]]:
        images = {}
        for name in self.cameras:
            self._renderer.update_scene(self.env.data, camera=CAMERAS[name])
            images[name] = np.ascontiguousarray(self._renderer.render()[::-1])
        return images

    def reset(self, seed: int) -> StepResult:
        self.env._freeze_rand_vec = False
        self.env.seed(seed)
        obs, _ = self.env.reset()
        self.env._freeze_rand_vec = True
        self._obs = obs
        self._initial_distance = max(self._distance(obs), 1e-6)
        return StepResult(self.render(), obs.astype(np.float32), False, 0.0, 0.0)

    def _distance(self, obs: NDArray[np.float64]) -> float:
        # Progress is measured on what the task moves: the object, or the hand for reaching.
        mover = obs[0:3] if self.task.startswith("reach") else obs[4:7]
        return float(np.linalg.norm(mover - obs[-3:]))

    def expert_action(self, rng: np.random.Generator, noise: float = 0.1) -> NDArray[np.float32]:
        with warnings.catch_warnings():
            # The experts' gains exceed the action bounds by design; the env clips.
            warnings.simplefilter("ignore", UserWarning)
            action = np.asarray(self.expert.get_action(self._obs), dtype=np.float64)
        if noise > 0:
            action = action + rng.normal(0.0, noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def step(self, action: NDArray[np.float32]) -> StepResult:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if action.shape != (len(ACTION_NAMES),):
            raise ValueError(f"action: expected {len(ACTION_NAMES)} values, got {action.shape[0]}")
        obs, reward, _, _, info = self.env.step(action)
        self._obs = obs
        success = bool(info.get("success", 0.0) >= 1.0)
        progress = (
            1.0 if success else float(np.clip(1.0 - self._distance(obs) / self._initial_distance, 0.0, 1.0))
        )
        return StepResult(self.render(), obs.astype(np.float32), success, float(reward), progress)

    def close(self) -> None:
        self._renderer.close()
        self.env.close()
