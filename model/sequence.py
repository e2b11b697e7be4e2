"""The WAM's one token layout, used by training (teacher forcing) and inference (KV cache) alike.

    history : [ conditioning frame | clean chunk 1 | ... | clean chunk K ]     timestep 0
    query c : [ noisy video of chunk c | A action tokens | 1 state token ]     timestep sigma_c

A training window is its history followed by its K queries, in one pass; at inference the
history lives in the session's KV cache and one query is denoised at a time against it. Token
positions are absolute from the conditioning frame (chunk c's latent frames start at
1 + (c - 1) * Fc), and the block-causal mask (transformer.attention_mask) lets query c see the
conditioning frame, clean chunks < c and itself only, so both paths compute the same function.
The whole query, state token included, carries the chunk's noise level (as in DreamZero).
"""

from __future__ import annotations

import torch
from torch import Tensor

from wamfleet.model.config import WAMConfig
from wamfleet.model.transformer import (
    CrossContext,
    Kind,
    TokenMeta,
    WorldActionModel,
    action_meta,
    state_meta,
    video_meta,
)

TIMESTEP_SCALE = 1000.0


def chunk_frame(cfg: WAMConfig, chunk: int) -> int:
    """The first latent frame of chunk `chunk` (1-based; the conditioning frame is frame 0)."""
    return 1 + (chunk - 1) * cfg.latent_frames_per_chunk


def frames_of(channels: Tensor | None, first: int, count: int) -> Tensor | None:
    """The I2V first-frame channels (B, mask + C, F, h, w) of latent frames [first, first + count)."""
    if channels is None:
        return None
    if channels.shape[2] < first + count:
        raise ValueError(
            f"first_frame_channels: cover {channels.shape[2]} latent frames, frame {first + count - 1} needed"
        )
    return channels[:, :, first : first + count]


def query_channels(cfg: WAMConfig, channels: Tensor | None, chunk: int) -> Tensor | None:
    """The I2V channels of chunk `chunk`'s latent frames (what its noisy query is patchified with)."""
    return frames_of(channels, chunk_frame(cfg, chunk), cfg.latent_frames_per_chunk)


def query_length(cfg: WAMConfig) -> int:
    return cfg.latent_frames_per_chunk * cfg.tokens_per_latent_frame + cfg.actions_per_chunk + 1


def history_capacity(cfg: WAMConfig) -> int:
    """Tokens a session's cache must hold: the conditioning frame, every cached chunk, one query."""
    tpf = cfg.tokens_per_latent_frame
    return tpf + cfg.cache_chunks * cfg.latent_frames_per_chunk * tpf + query_length(cfg)


def cond_tokens(model: WorldActionModel, cond: Tensor, channels: Tensor | None) -> tuple[Tensor, TokenMeta]:
    return model.video_tokens(cond, 0, Kind.COND, 0, frames_of(channels, 0, 1))


def clean_tokens(
    model: WorldActionModel, latents: Tensor, first_chunk: int, channels: Tensor | None
) -> tuple[Tensor, TokenMeta]:
    """Clean chunks first_chunk, first_chunk + 1, ... from their latents (B, C, n * Fc, h, w)."""
    fc = model.config.latent_frames_per_chunk
    n = latents.shape[2] // fc
    per_frame = torch.arange(first_chunk, first_chunk + n).repeat_interleave(fc)
    first = chunk_frame(model.config, first_chunk)
    return model.video_tokens(latents, first, Kind.CLEAN, per_frame, frames_of(channels, first, n * fc))


def history_tokens(
    model: WorldActionModel, cond: Tensor, clean: Tensor | None, channels: Tensor | None
) -> tuple[Tensor, TokenMeta]:
    """What a query attends to when nothing is cached: the conditioning frame, then clean chunks
    1, 2, ... from their latents (B, C, n * Fc, h, w) (none before the first chunk ran)."""
    parts = [cond_tokens(model, cond, channels)]
    if clean is not None:
        parts.append(clean_tokens(model, clean, 1, channels))
    return torch.cat([p[0] for p in parts], dim=1), TokenMeta.cat([p[1] for p in parts])


def clean_timesteps(tokens: Tensor) -> Tensor:
    """(B, L) DiT timesteps of history tokens (B, L, D): all 0, they are clean."""
    return torch.zeros(tokens.shape[0], tokens.shape[1], device=tokens.device)


def query_meta(cfg: WAMConfig, chunk: int) -> TokenMeta:
    fc, (lh, lw), p = cfg.latent_frames_per_chunk, cfg.latent_hw, cfg.patch_size
    frame = chunk_frame(cfg, chunk)
    return TokenMeta.cat(
        [
            video_meta(fc, lh // p[1], lw // p[2], frame, Kind.NOISY, chunk),
            action_meta(cfg.actions_per_chunk, chunk, frame),
            state_meta(chunk, frame),
        ]
    )


def state_token(model: WorldActionModel, state: Tensor, state_mask: Tensor, embodiments: list[str]) -> Tensor:
    """(B, 1, D): a chunk's state token (the same at every denoising step)."""
    return model.state_tokens(state, state_mask, embodiments, 0, 0)[0]


def query_tokens(
    model: WorldActionModel,
    video: Tensor,
    actions: Tensor,
    state: Tensor,
    action_mask: Tensor,
    embodiments: list[str],
    channels: Tensor | None,
) -> Tensor:
    """(B, Lq, D) tokens of one query: noisy video (B, C, Fc, h, w), actions (B, A, max_action_dim)
    and the chunk's `state_token`; `channels` are the query frames' own I2V channels. Positions
    come from `query_meta`, so one set of tokens serves sessions at different chunks (and
    nothing is built on the host and copied to the device at every denoising step)."""
    v = model.patchify(video, channels)
    a = model.embed_actions(actions, action_mask, embodiments)
    return torch.cat([v, a, state], dim=1)


def query_timesteps(sigma: Tensor, length: int) -> Tensor:
    """(B,) noise levels -> (B, length) DiT timesteps for every token of the query."""
    return (sigma * TIMESTEP_SCALE)[:, None].expand(-1, length)


def split_query(model: WorldActionModel, hidden: Tensor, embodiments: list[str]) -> tuple[Tensor, Tensor]:
    """A query's hidden states -> video velocity (B, C, Fc, h, w), action velocity (B, A, max_action_dim)."""
    cfg = model.config
    fc = cfg.latent_frames_per_chunk
    n_video = fc * cfg.tokens_per_latent_frame
    video_v = model.unpatchify(hidden[:, :n_video], fc)
    action_v = model.decode_actions(hidden[:, n_video : n_video + cfg.actions_per_chunk], embodiments)
    return video_v, action_v


def teacher_forced_velocity(
    model: WorldActionModel,
    cond: Tensor,
    video: Tensor,
    noisy_video: Tensor,
    noisy_actions: Tensor,
    states: Tensor,
    sigmas: Tensor,
    action_mask: Tensor,
    state_mask: Tensor,
    embodiments: list[str],
    cross: CrossContext,
    channels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Velocities of every chunk of training windows in one teacher-forced pass.

    cond (B, C, 1, h, w) and clean video (B, C, K*Fc, h, w) form the history; noisy_video
    (B, C, K*Fc, h, w), noisy_actions (B, K, A, max_action_dim), states (B, K, max_state_dim)
    and sigmas (B, K) the K queries. Returns video velocity (B, C, K*Fc, h, w) and action
    velocity (B, K, A, max_action_dim).
    """
    cfg = model.config
    k = noisy_actions.shape[1]
    fc = cfg.latent_frames_per_chunk
    history, history_meta = history_tokens(model, cond, video, channels)
    tokens, metas, times = [history], [history_meta], [clean_timesteps(history)]
    for c in range(1, k + 1):
        query = query_tokens(
            model,
            noisy_video[:, :, (c - 1) * fc : c * fc],
            noisy_actions[:, c - 1],
            state_token(model, states[:, c - 1], state_mask, embodiments),
            action_mask,
            embodiments,
            query_channels(cfg, channels, c),
        )
        tokens.append(query)
        metas.append(model._to_device(query_meta(cfg, c), query.device))
        times.append(query_timesteps(sigmas[:, c - 1], query.shape[1]))
    hidden = model.run(torch.cat(tokens, dim=1), torch.cat(times, dim=1), TokenMeta.cat(metas), cross)
    n, q = history.shape[1], query_length(cfg)
    outs = [split_query(model, hidden[:, n + i * q : n + (i + 1) * q], embodiments) for i in range(k)]
    return torch.cat([o[0] for o in outs], dim=2), torch.stack([o[1] for o in outs], dim=1)
