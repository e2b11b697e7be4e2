"""Train a policy on one machine straight from episode bundles and save it as a policy directory.

The single-process core of fine-tuning: normalisation stats (q01/q99) and video-latent
statistics fitted on the data, training windows built from the bundles, the model's Trainer,
and a policy directory that `wamfleet serve` loads. The Kubeflow/Ray pipeline wraps the same
steps for the fleet's data at scale.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.model.config import WAMConfig
from wamfleet.model.normalize import QuantileNormalizer
from wamfleet.model.policy import save_policy
from wamfleet.model.text import TextEncoder
from wamfleet.model.trainer import Trainer, TrainerConfig
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.pipelines.windows import collate, episode_windows
from wamfleet.platform.contracts.curation import FailedEpisodes
from wamfleet.platform.contracts.embodiment import EmbodimentSpec

LATENT_STATS_CLIPS = 8


@dataclass
class TrainResult:
    policy_dir: Path
    sha256: str
    windows: int
    losses: list[float] = field(default_factory=list)


def embodiment_entry(
    spec: EmbodimentSpec, state_norm: QuantileNormalizer, action_norm: QuantileNormalizer | None
) -> dict[str, Any]:
    """What a policy stores per embodiment: the spec and its normalisation statistics."""
    return {
        "spec": spec.model_dump(mode="json"),
        "state_norm": state_norm.to_dict(),
        "action_norm": action_norm.to_dict() if action_norm else None,
    }


def train_policy(
    bundles: Sequence[Path],
    out_dir: Path,
    spec: EmbodimentSpec,
    *,
    preset: str = "tiny",
    steps: int = 150,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    failed_episodes: FailedEpisodes = "world_model",
    config_overrides: dict[str, Any] | None = None,
    max_windows: int | None = None,
    device: str = "cpu",
    lr_schedule: Literal["constant", "cosine"] = "constant",
) -> TrainResult:
    """`failed_episodes`: the curation recipe's rule for episodes that report failure;
    `config_overrides`: WAMConfig fields over the preset's; `max_windows`: train on this many
    windows drawn at random (seeded), so datasets of unequal length can train on equal data;
    `device`: where the windows are encoded and the transformer trains;
    `lr_schedule`: "cosine" decays to a tenth of `lr` over `steps`."""
    if not bundles:
        raise ValueError("bundles: nothing to train on")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg = WAMConfig.preset_named(
        preset,
        cameras=[c.name for c in spec.cameras],
        embodiments=[{"name": spec.name, "state_dim": spec.state_dim, "action_dim": spec.action_dim}],
        **(config_overrides or {}),
    )
    readers = [EpisodeReader(Path(b)) for b in bundles]
    state_norm = QuantileNormalizer.fit(np.concatenate([r.states() for r in readers]))
    with_actions = [a for r in readers if (a := r.actions()) is not None]
    action_norm = QuantileNormalizer.fit(np.concatenate(with_actions)) if with_actions else None

    codec = VideoCodec(cfg).eval().to(device)  # on a GPU the windows encode there too
    clips = []
    for reader in readers[:LATENT_STATS_CLIPS]:
        n = min(reader.num_frames, 1 + 4 * 4)
        frames = reader.frames(0, n - (n - 1) % 4, cfg.cameras)
        clips.append(torch.from_numpy(np.stack([frames[c] for c in cfg.cameras], axis=1))[None])
    with torch.no_grad():
        codec.fit_latent_stats(clips)
        windows = [
            w
            for r in readers
            for w in episode_windows(
                r, codec, cfg, spec.name, state_norm, action_norm, failed_episodes=failed_episodes
            )
        ]
    if max_windows is not None and len(windows) > max_windows:
        windows = rng.sample(windows, max_windows)
    if not windows:
        raise ValueError(f"bundles: no episode is long enough for one window ({cfg.context_chunks} chunks)")
    text = TextEncoder(cfg.text)
    model = WorldActionModel(cfg)
    schedule = TrainerConfig(
        lr=lr, warmup_steps=min(20, steps // 5), schedule=lr_schedule, decay_steps=steps, seed=seed
    )
    trainer = Trainer(model, schedule, device=device)
    losses = []
    for step in range(steps):
        batch = collate(rng.sample(windows, min(batch_size, len(windows))), text, cfg)
        metrics = trainer.step([batch])
        losses.append(metrics.loss)
        if on_step is not None:
            on_step(step + 1, metrics.loss)
    model.to("cpu").eval()
    codec.to("cpu")
    entry = embodiment_entry(spec, state_norm, action_norm)
    sha = save_policy(out_dir, model, codec, embodiments={spec.name: entry}, metadata=metadata or {})
    return TrainResult(Path(out_dir), sha, len(windows), losses)
