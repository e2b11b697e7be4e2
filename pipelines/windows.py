"""Training windows from episode bundles: a conditioning frame plus K chunks of video and actions.

A window starting at control step s holds the frame at s, then for chunk k the frames after
each `action_stride` steps up to s + (k+1) * A (what the robot saw while executing chunk k),
the A actions of chunk k, and the state at the chunk's start. Video is encoded chunk by chunk
(the codec's encode_window), exactly as the sampler encodes executed chunks at inference.

Outcome-aware training: a failed episode still shows the world model what happens, but its
actions are not imitated. Its windows keep their video and their executed actions (what the
video follows) but drop out of the action loss, unless every action in the window was a
person's correction (the frame's `intervention` flag).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.model.config import WAMConfig
from wamfleet.model.normalize import QuantileNormalizer, dim_mask, pad_last
from wamfleet.model.objective import WAMBatch
from wamfleet.model.text import TextEncoder
from wamfleet.model.vae import VideoCodec
from wamfleet.platform.contracts.curation import FailedEpisodes, actions_are_targets


@dataclass
class WindowSample:
    cond: Tensor  # (C, 1, h, w)
    video: Tensor  # (C, K * Fc, h, w)
    actions: Tensor  # (K, A, max_action_dim), normalised and padded (zeros when video-only)
    states: Tensor  # (K, max_state_dim)
    action_dim: int
    state_dim: int
    has_actions: bool
    task: str
    embodiment: str
    # Wan I2V only: the conditioning frame's channels (mask + C, 1 + K * Fc, h, w) and CLIP tokens.
    first_frame_channels: Tensor | None = None
    image: Tensor | None = None


def imitated_frames(reader: EpisodeReader, failed_episodes: FailedEpisodes) -> NDArray[np.bool_] | None:
    """Frames whose actions the policy should learn to take; None: all of them.

    Only an episode that reports failure is filtered: its interventions are kept (a person chose
    those actions), the policy's own actions are not."""
    if actions_are_targets(reader.manifest.outcome.success, failed_episodes):
        return None
    return reader.interventions()


def window_starts(num_frames: int, cfg: WAMConfig, chunks: int | None = None) -> list[int]:
    """Control steps where a full window fits, one window per chunk length apart."""
    span = (chunks or cfg.context_chunks) * cfg.actions_per_chunk
    return list(range(0, num_frames - span, cfg.actions_per_chunk))


def episode_windows(
    reader: EpisodeReader,
    codec: VideoCodec,
    cfg: WAMConfig,
    embodiment: str,
    state_norm: QuantileNormalizer | None,
    action_norm: QuantileNormalizer | None,
    chunks: int | None = None,
    start: int = 0,
    stop: int | None = None,
    failed_episodes: FailedEpisodes = "world_model",
) -> list[WindowSample]:
    """Every window inside frames [start, stop) (curation's trimmed range; default: all)."""
    k = chunks or cfg.context_chunks
    missing = [c for c in cfg.cameras if c not in reader.cameras]
    if missing:
        raise ValueError(f"cameras: the episode has {reader.cameras}, the model needs {cfg.cameras}")
    stop = reader.num_frames if stop is None else min(stop, reader.num_frames)
    starts = [start + s for s in window_starts(stop - start, cfg, k)]
    if not starts:
        return []
    frames = reader.frames(0, stop, cfg.cameras)
    video = np.stack([frames[c] for c in cfg.cameras], axis=1)  # (T, V, H, W, 3)
    states = reader.states()
    actions = reader.actions()
    imitated = imitated_frames(reader, failed_episodes) if actions is not None else None
    a, stride = cfg.actions_per_chunk, cfg.action_stride
    samples = []
    for s in starts:
        idx = [s] + [s + stride * (j + 1) for j in range(k * cfg.video_frames_per_chunk)]
        with torch.no_grad():
            cond, chunk_latents = codec.encode_window(torch.from_numpy(video[idx])[None])
            image = channels = None
            if cfg.image_conditioning is not None:
                frame = torch.from_numpy(video[s])[None]
                image, channels = codec.first_frame_conditioning(frame, 1 + k * cfg.latent_frames_per_chunk)
        state_rows = states[[s + c * a for c in range(k)]]
        state_t = pad_last(state_norm.normalize(state_rows) if state_norm else state_rows, cfg.max_state_dim)
        imitate = actions is not None and (imitated is None or bool(imitated[s : s + k * a].all()))
        if actions is not None:  # not imitated: still the executed actions the video follows
            rows = actions[s : s + k * a]
            norm = action_norm.normalize(rows) if action_norm else rows
            action_t = pad_last(norm, cfg.max_action_dim).reshape(k, a, cfg.max_action_dim)
        else:
            action_t = torch.zeros(k, a, cfg.max_action_dim)
        samples.append(
            WindowSample(
                cond=cond[0],
                video=chunk_latents[0],
                actions=action_t,
                states=state_t,
                action_dim=0 if actions is None else actions.shape[1],
                state_dim=states.shape[1],
                has_actions=imitate,
                task=reader.manifest.task,
                embodiment=embodiment,
                first_frame_channels=None if channels is None else channels[0],
                image=None if image is None else image[0],
            )
        )
    return samples


def collate(samples: list[WindowSample], text: TextEncoder, cfg: WAMConfig) -> WAMBatch:
    """Stacks windows into a WAMBatch, embedding each instruction once (the encoder caches)."""
    emb, mask = text.encode([s.task for s in samples])
    b = len(samples)
    return WAMBatch(
        cond=torch.stack([s.cond for s in samples]),
        video=torch.stack([s.video for s in samples]),
        actions=torch.stack([s.actions for s in samples]),
        action_mask=torch.cat([dim_mask(s.action_dim, cfg.max_action_dim) for s in samples]),
        has_actions=torch.tensor([s.has_actions for s in samples]),
        states=torch.stack([s.states for s in samples]),
        state_mask=torch.cat([dim_mask(s.state_dim, cfg.max_state_dim) for s in samples]),
        text=emb[:b],
        text_mask=mask[:b],
        embodiments=[s.embodiment for s in samples],
        first_frame_channels=_stack_optional([s.first_frame_channels for s in samples]),
        image=_stack_optional([s.image for s in samples]),
    )


def _stack_optional(items: list[Tensor | None]) -> Tensor | None:
    present = [t for t in items if t is not None]
    if not present:
        return None
    if len(present) != len(items):
        raise ValueError("windows: I2V conditioning is missing from some windows")
    return torch.stack(present)
