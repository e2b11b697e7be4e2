"""A tiny random policy saved as a real policy directory, for serving tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import save_policy
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.platform.contracts.builtin_embodiments import DROID, DROID_CAMERAS, droid_embodiment

EMBODIMENT = "sawyer-metaworld"


def tiny_policy(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = WAMConfig.preset_named("tiny", embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}])
    spec = sawyer_embodiment(96)
    norm = {"q01": [-1.0] * 4, "q99": [1.0] * 4}
    entry = {"spec": spec.model_dump(mode="json"), "action_norm": norm, "state_norm": None}
    save_policy(directory, WorldActionModel(cfg), VideoCodec(cfg), embodiments={EMBODIMENT: entry})
    return directory


def tiny_droid_policy(directory: Path, seed: int = 0) -> Path:
    """A tiny random policy for the built-in `droid` embodiment (its 3 cameras, 8-d state and
    actions), observed through openpi's DROID keys."""
    torch.manual_seed(seed)
    spec = droid_embodiment()
    cfg = WAMConfig.preset_named(
        "tiny",
        cameras=list(DROID_CAMERAS),
        embodiments=[{"name": DROID, "state_dim": spec.state_dim, "action_dim": spec.action_dim}],
    )
    norm = {"q01": [-1.0] * spec.action_dim, "q99": [1.0] * spec.action_dim}
    entry = {"spec": spec.model_dump(mode="json"), "action_norm": norm, "state_norm": None}
    save_policy(directory, WorldActionModel(cfg), VideoCodec(cfg), embodiments={DROID: entry})
    return directory


def nan_policy(directory: Path) -> Path:
    """A tiny policy whose action head outputs NaN: a broken model the server must contain."""
    from wamfleet.model.policy import load_policy

    policy = load_policy(tiny_policy(directory / "base"))
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if name.startswith("action_decoders."):
                param.fill_(float("nan"))
    save_policy(directory / "nan", policy.model, policy.codec, embodiments=policy.embodiments)
    return directory / "nan"


def v2_input(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": [len(data)] if shape is None else shape,
        "data": data,
    }


def v2_body(
    session: str = "s",
    *,
    frames: NDArray[np.uint8] | None = None,
    state_values: NDArray[np.float32] | None = None,
    **inputs: dict[str, Any] | None,
) -> dict[str, Any]:
    """A valid v2 infer body (2 views of 16x16, zero state); `inputs` adds, replaces (by input
    name) or, given None, removes inputs."""
    images = np.zeros((2, 16, 16, 3), np.uint8) if frames is None else frames
    state = np.zeros(39, np.float32) if state_values is None else state_values
    body: dict[str, dict[str, Any] | None] = {
        "images": v2_input("images", "UINT8", images.ravel().tolist(), list(images.shape)),
        "state": v2_input("state", "FP32", state.ravel().tolist(), list(state.shape)),
        "instruction": v2_input("instruction", "BYTES", ["reach the goal"]),
        "session_id": v2_input("session_id", "BYTES", [session]),
    }
    body.update(inputs)
    return {"inputs": [i for i in body.values() if i is not None]}
