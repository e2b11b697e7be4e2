"""Flow matching with teacher forcing: one training step's noise, noise levels and loss.

x_t = (1 - s) x0 + s * eps, the model predicts the velocity eps - x0. Each chunk draws one s
shared by its video latents and its actions; the clean copy of every chunk sits in the same
sequence as history (the layout is sequence.py's). The noise levels follow DreamZero: uniform
before the time shift, i.e. uniform over the shifted grid the sampler walks (P(s < 0.25) ~ 6%
at shift 5, where a logit-normal draw gave 0.35% and left the last sampling steps untrained),
with the loss weighted toward mid noise by the same bell DreamZero's scheduler uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from wamfleet.model.config import WAMConfig
from wamfleet.model.sequence import TIMESTEP_SCALE, teacher_forced_velocity
from wamfleet.model.transformer import WorldActionModel

__all__ = ["TIMESTEP_SCALE", "WAMBatch", "flow_matching_loss", "sample_sigmas", "shift_sigmas"]
SIGMA_MIN = 0.003 / 1.002  # DreamZero's / Wan's smallest training noise level before the shift


@dataclass
class WAMBatch:
    """A batch of training windows: a conditioning frame and K chunks each (normalised)."""

    cond: Tensor  # (B, C, 1, h, w) latent of the conditioning frame
    video: Tensor  # (B, C, K * Fc, h, w) latents of the K chunks
    actions: Tensor  # (B, K, A, max_action_dim), zero-padded
    action_mask: Tensor  # (B, max_action_dim): 1 for the embodiment's real action dims
    has_actions: Tensor  # (B,) bool: False for video-only samples
    states: Tensor  # (B, K, max_state_dim): the state at each chunk's start, zero-padded
    state_mask: Tensor  # (B, max_state_dim)
    text: Tensor  # (B, T, text_dim)
    text_mask: Tensor  # (B, T)
    embodiments: list[str]
    # Wan I2V only: (B, mask + C, 1 + K * Fc, h, w) first-frame channels, (B, tokens, image_dim) CLIP.
    first_frame_channels: Tensor | None = None
    image: Tensor | None = None

    @property
    def num_chunks(self) -> int:
        return int(self.actions.shape[1])

    def to(self, device: torch.device | str) -> WAMBatch:
        moved: dict[str, Any] = {
            k: v.to(device) if isinstance(v, Tensor) else v for k, v in vars(self).items()
        }
        moved["embodiments"] = list(self.embodiments)
        return WAMBatch(**moved)


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """The time shift of SD3 / Wan flow matching: more steps at high noise for shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch: int, chunks: int, cfg: WAMConfig, generator: torch.Generator | None = None
) -> Tensor:
    """One noise level per chunk, (B, K) in (0, 1]: uniform then shifted (DreamZero), or
    logit-normal then shifted (SD3's choice, kept as an option)."""
    if cfg.train_sigmas == "uniform":
        u = SIGMA_MIN + (1.0 - SIGMA_MIN) * torch.rand(batch, chunks, generator=generator)
    else:
        u = torch.sigmoid(torch.randn(batch, chunks, generator=generator))
    return shift_sigmas(u, cfg.flow_shift)


def _bell(sigmas: Tensor) -> Tensor:
    t = sigmas * TIMESTEP_SCALE
    return torch.exp(-2 * ((t - TIMESTEP_SCALE / 2) / TIMESTEP_SCALE) ** 2) - math.exp(-0.5)


@cache
def _bell_mean(shift: float) -> float:
    grid = shift_sigmas(torch.linspace(1.0, SIGMA_MIN, 1000, dtype=torch.float64), shift)
    return float(_bell(grid).mean())


def loss_weights(sigmas: Tensor, cfg: WAMConfig) -> Tensor:
    """DreamZero's per-chunk loss weight: a bell in the timestep, 0 at pure noise, mean 1 over
    the training draw; all ones with loss_weighting="none"."""
    if cfg.loss_weighting == "none":
        return torch.ones_like(sigmas)
    return _bell(sigmas) / _bell_mean(cfg.flow_shift)


def check_batch(model: WorldActionModel, batch: WAMBatch) -> None:
    """Shapes must agree with the config; errors name the field."""
    cfg = model.config
    b, k = batch.actions.shape[:2]
    fc, (lh, lw) = cfg.latent_frames_per_chunk, cfg.latent_hw
    expected: dict[str, tuple[int, ...]] = {
        "cond": (b, cfg.vae.z_dim, 1, lh, lw),
        "video": (b, cfg.vae.z_dim, k * fc, lh, lw),
        "actions": (b, k, cfg.actions_per_chunk, cfg.max_action_dim),
        "action_mask": (b, cfg.max_action_dim),
        "has_actions": (b,),
        "states": (b, k, cfg.max_state_dim),
        "state_mask": (b, cfg.max_state_dim),
    }
    image = cfg.image_conditioning
    if image is not None:
        expected["first_frame_channels"] = (b, cfg.in_channels - cfg.vae.z_dim, 1 + k * fc, lh, lw)
        expected["image"] = (b, image.tokens, image.image_dim)
    for name, shape in expected.items():
        value = getattr(batch, name)
        if value is None:
            raise ValueError(f"batch.{name}: required by this model config (Wan I2V conditioning)")
        if tuple(value.shape) != shape:
            raise ValueError(f"batch.{name}: expected shape {shape}, got {tuple(value.shape)}")
    if k > cfg.context_chunks:
        raise ValueError(f"batch.actions: {k} chunks exceed the model's context_chunks={cfg.context_chunks}")
    if batch.text.shape[0] != b or batch.text.shape[-1] != cfg.text.dim:
        raise ValueError(f"batch.text: expected (B={b}, T, {cfg.text.dim}), got {tuple(batch.text.shape)}")
    if len(batch.embodiments) != b:
        raise ValueError(f"batch.embodiments: expected {b} names, got {len(batch.embodiments)}")
    for name in batch.embodiments:
        cfg.embodiment(name)


def window_velocity(
    model: WorldActionModel,
    batch: WAMBatch,
    noisy_video: Tensor,
    noisy_actions: Tensor,
    sigmas: Tensor,
) -> tuple[Tensor, Tensor]:
    """The model's velocity for every noisy chunk of the batch's windows (sequence.py's layout).

    Returns video velocity (B, C, K*Fc, h, w) and action velocity (B, K, A, max_action_dim).
    """
    cross = model.cross_context(batch.text, batch.text_mask, batch.image)
    return teacher_forced_velocity(
        model,
        batch.cond,
        batch.video,
        noisy_video,
        noisy_actions,
        batch.states,
        sigmas,
        batch.action_mask,
        batch.state_mask,
        batch.embodiments,
        cross,
        batch.first_frame_channels,
    )


@dataclass
class LossOutput:
    loss: Tensor
    video_loss: Tensor
    action_loss: Tensor


def flow_matching_loss(
    model: WorldActionModel, batch: WAMBatch, generator: torch.Generator | None = None
) -> LossOutput:
    """Weighted video MSE + masked action MSE on the velocity; video-only samples add no action loss."""
    check_batch(model, batch)
    cfg = model.config
    b, k = batch.actions.shape[:2]
    fc = cfg.latent_frames_per_chunk
    device = batch.video.device
    sigmas = sample_sigmas(b, k, cfg, generator).to(device)
    eps_video = torch.randn(batch.video.shape, generator=generator).to(device)
    eps_action = torch.randn(batch.actions.shape, generator=generator).to(device)
    s_video = sigmas.repeat_interleave(fc, dim=1)[:, None, :, None, None]
    s_action = sigmas[:, :, None, None]
    noisy_video = (1 - s_video) * batch.video + s_video * eps_video
    noisy_actions = (1 - s_action) * batch.actions + s_action * eps_action
    video_v, action_v = window_velocity(model, batch, noisy_video, noisy_actions, sigmas)

    weights = loss_weights(sigmas, cfg)  # (B, K)
    video_err = ((video_v.float() - (eps_video - batch.video)) ** 2).mean(dim=(1, 3, 4))  # (B, K*Fc)
    video_loss = (video_err * weights.repeat_interleave(fc, dim=1)).mean()
    dims = (batch.has_actions.float()[:, None] * batch.action_mask)[:, None, None, :]  # (B, 1, 1, D)
    err = (action_v.float() - (eps_action - batch.actions)) ** 2 * dims * weights[:, :, None, None]
    denom = dims.expand_as(err).sum().clamp_min(1.0)
    action_loss = err.sum() / denom
    total = cfg.video_loss_weight * video_loss + cfg.action_loss_weight * action_loss
    return LossOutput(total, video_loss, action_loss)


class FlowMatchingObjective(nn.Module):
    """The loss as a module's forward, so DistributedDataParallel (Ray Train's prepare_model) can
    wrap it: the WAM itself runs through several methods, never one `forward`."""

    def __init__(self, model: WorldActionModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: WAMBatch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = flow_matching_loss(self.model, batch, generator)
        return out.loss, out.video_loss, out.action_loss
