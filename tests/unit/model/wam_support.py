"""Synthetic inputs for the World Action Model tests (the tiny preset, CPU)."""

from __future__ import annotations

import torch

from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch
from wamfleet.model.transformer import WorldActionModel

EMBODIMENTS = [
    {"name": "sawyer", "state_dim": 39, "action_dim": 4},
    {"name": "arm6", "state_dim": 7, "action_dim": 6},
]


def tiny_config(**overrides: object) -> WAMConfig:
    return WAMConfig.preset_named("tiny", embodiments=EMBODIMENTS, **overrides)


def tiny_model(seed: int = 0, **overrides: object) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(tiny_config(**overrides)).eval()


def masks(cfg: WAMConfig, embodiment: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    head = cfg.embodiment(embodiment)
    action_mask = torch.zeros(batch, cfg.max_action_dim)
    action_mask[:, : head.action_dim] = 1
    state_mask = torch.zeros(batch, cfg.max_state_dim)
    state_mask[:, : head.state_dim] = 1
    return action_mask, state_mask


def synthetic_batch(
    cfg: WAMConfig, batch: int = 2, chunks: int = 3, seed: int = 0, embodiment: str = "sawyer"
) -> WAMBatch:
    g = torch.Generator().manual_seed(seed)
    c, (h, w), fc = cfg.vae.z_dim, cfg.latent_hw, cfg.latent_frames_per_chunk
    action_mask, state_mask = masks(cfg, embodiment, batch)
    return WAMBatch(
        cond=torch.randn(batch, c, 1, h, w, generator=g),
        video=torch.randn(batch, c, chunks * fc, h, w, generator=g),
        actions=torch.randn(batch, chunks, cfg.actions_per_chunk, cfg.max_action_dim, generator=g)
        * action_mask[:, None, None],
        action_mask=action_mask,
        has_actions=torch.ones(batch, dtype=torch.bool),
        states=torch.randn(batch, chunks, cfg.max_state_dim, generator=g) * state_mask[:, None],
        state_mask=state_mask,
        text=torch.randn(batch, 6, cfg.text.dim, generator=g),
        text_mask=torch.ones(batch, 6),
        embodiments=[embodiment] * batch,
    )
