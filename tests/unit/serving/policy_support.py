"""A tiny random policy saved as a real policy directory, for serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from wamfleet.fleet_agent.sim.metaworld_robot import sawyer_embodiment
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import save_policy
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec

EMBODIMENT = "sawyer-metaworld"


def tiny_policy(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = WAMConfig.preset_named("tiny", embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}])
    spec = sawyer_embodiment(96)
    norm = {"q01": [-1.0] * 4, "q99": [1.0] * 4}
    entry = {"spec": spec.model_dump(mode="json"), "action_norm": norm, "state_norm": None}
    save_policy(directory, WorldActionModel(cfg), VideoCodec(cfg), embodiments={EMBODIMENT: entry})
    return directory
