"""Flow matching with teacher forcing: one training step's sequence, noise and loss.

x_t = (1 - s) x0 + s * eps, the model predicts the velocity eps - x0. Each chunk draws one s
(logit-normal, then shifted as in diffusers' flow-match schedulers) shared by its video
latents and its actions; the clean copy of every chunk sits in the same sequence as history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wamfleet.model.transformer import Kind, TokenMeta, WorldActionModel

TIMESTEP_SCALE = 1000.0


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

    @property
    def num_chunks(self) -> int:
        return int(self.actions.shape[1])

    def to(self, device: torch.device | str) -> WAMBatch:
        fields = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, Tensor)}
        return WAMBatch(**fields, embodiments=list(self.embodiments))


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """The time shift of SD3 / Wan flow matching: more steps at high noise for shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(batch: int, chunks: int, shift: float, generator: torch.Generator | None = None) -> Tensor:
    """One noise level per chunk: logit-normal, shifted. (B, K) in (0, 1)."""
    u = torch.sigmoid(torch.randn(batch, chunks, generator=generator))
    return shift_sigmas(u, shift)


def check_batch(model: WorldActionModel, batch: WAMBatch) -> None:
    """Shapes must agree with the config; errors name the field."""
    cfg = model.config
    b, k = batch.actions.shape[:2]
    fc, (lh, lw) = cfg.latent_frames_per_chunk, cfg.latent_hw
    expected = {
        "cond": (b, cfg.vae.z_dim, 1, lh, lw),
        "video": (b, cfg.vae.z_dim, k * fc, lh, lw),
        "actions": (b, k, cfg.actions_per_chunk, cfg.max_action_dim),
        "action_mask": (b, cfg.max_action_dim),
        "has_actions": (b,),
        "states": (b, k, cfg.max_state_dim),
        "state_mask": (b, cfg.max_state_dim),
    }
    for name, shape in expected.items():
        got = tuple(getattr(batch, name).shape)
        if got != shape:
            raise ValueError(f"batch.{name}: expected shape {shape}, got {got}")
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
    """The model's velocity for every noisy chunk of the windows, in one teacher-forced pass.

    Returns video velocity (B, C, K*Fc, h, w) and action velocity (B, K, A, max_action_dim).
    """
    cfg = model.config
    b, k = batch.actions.shape[:2]
    fc = cfg.latent_frames_per_chunk
    per_frame_chunk = torch.arange(1, k + 1).repeat_interleave(fc)
    parts: list[tuple[Tensor, Tensor, TokenMeta]] = []

    def add(tokens: Tensor, meta: TokenMeta, t: Tensor) -> None:
        parts.append((tokens, t.expand(b, tokens.shape[1]), meta))

    zero = torch.zeros(b, 1, device=batch.cond.device)
    add(*model.video_tokens(batch.cond, 0, Kind.COND, 0), zero)
    add(*model.video_tokens(batch.video, 1, Kind.CLEAN, per_frame_chunk), zero)
    tokens_per_frame = cfg.tokens_per_latent_frame
    noisy_tokens, noisy_meta = model.video_tokens(noisy_video, 1, Kind.NOISY, per_frame_chunk)
    video_t = (sigmas * TIMESTEP_SCALE).repeat_interleave(fc * tokens_per_frame, dim=1)
    parts.append((noisy_tokens, video_t, noisy_meta))
    for c in range(k):
        frame = 1 + c * fc
        t = (sigmas[:, c : c + 1] * TIMESTEP_SCALE).expand(b, 1)
        add(*model.action_tokens(noisy_actions[:, c], batch.action_mask, batch.embodiments, c + 1, frame), t)
        add(*model.state_tokens(batch.states[:, c], batch.state_mask, batch.embodiments, c + 1, frame), zero)
    tokens = torch.cat([p[0] for p in parts], dim=1)
    timesteps = torch.cat([p[1] for p in parts], dim=1)
    meta = TokenMeta.cat([p[2] for p in parts])
    text_kv, text_mask = model.text_context(batch.text, batch.text_mask)
    hidden = model.run(tokens, timesteps, meta, text_kv, text_mask)

    start = parts[0][0].shape[1] + parts[1][0].shape[1]
    video_hidden = hidden[:, start : start + noisy_tokens.shape[1]]
    video_v = model.unpatchify(video_hidden, k * fc)
    a = cfg.actions_per_chunk
    offset = start + noisy_tokens.shape[1]
    action_hidden = torch.stack(
        [hidden[:, offset + c * (a + 1) : offset + c * (a + 1) + a] for c in range(k)], dim=1
    )
    action_v = model.decode_actions(action_hidden.flatten(1, 2), batch.embodiments).unflatten(1, (k, a))
    return video_v, action_v


@dataclass
class LossOutput:
    loss: Tensor
    video_loss: Tensor
    action_loss: Tensor


def flow_matching_loss(
    model: WorldActionModel, batch: WAMBatch, generator: torch.Generator | None = None
) -> LossOutput:
    """Video MSE + masked action MSE on the velocity; video-only samples add no action loss."""
    check_batch(model, batch)
    cfg = model.config
    b, k = batch.actions.shape[:2]
    fc = cfg.latent_frames_per_chunk
    device = batch.video.device
    sigmas = sample_sigmas(b, k, cfg.flow_shift, generator).to(device)
    eps_video = torch.randn(batch.video.shape, generator=generator).to(device)
    eps_action = torch.randn(batch.actions.shape, generator=generator).to(device)
    s_video = sigmas.repeat_interleave(fc, dim=1)[:, None, :, None, None]
    s_action = sigmas[:, :, None, None]
    noisy_video = (1 - s_video) * batch.video + s_video * eps_video
    noisy_actions = (1 - s_action) * batch.actions + s_action * eps_action
    video_v, action_v = window_velocity(model, batch, noisy_video, noisy_actions, sigmas)

    video_loss = ((video_v.float() - (eps_video - batch.video)) ** 2).mean()
    weight = (batch.has_actions.float()[:, None] * batch.action_mask)[:, None, None, :]
    err = (action_v.float() - (eps_action - batch.actions)) ** 2 * weight
    denom = weight.expand_as(err).sum().clamp_min(1.0)
    action_loss = err.sum() / denom
    return LossOutput(video_loss + cfg.action_loss_weight * action_loss, video_loss, action_loss)


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
