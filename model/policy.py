"""A policy directory: everything needed to act, in one folder serving can load.

    transformer/        a checkpoint (checkpoint.py): weights, config, embodiments, sha256
    codec.safetensors   the video codec's weights and latent statistics (random VAEs too)
    policy.json         format version, both sha256s, free-form metadata (lineage, version)

The text encoder is rebuilt from the config (MiniLM ships in a package, UMT5 from a local dir).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wamfleet.model.artifacts import atomic_directory, file_sha256
from wamfleet.model.checkpoint import load_checkpoint, save_checkpoint
from wamfleet.model.config import WAMConfig
from wamfleet.model.text import TextEncoder
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec

POLICY_FILE = "policy.json"
CODEC_FILE = "codec.safetensors"
TRANSFORMER_DIR = "transformer"
POLICY_FORMAT = 1


@dataclass
class LoadedPolicy:
    model: WorldActionModel
    codec: VideoCodec
    text: TextEncoder
    config: WAMConfig
    embodiments: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    sha256: str  # of the transformer weights: the policy's identity


def save_policy(
    directory: str | os.PathLike[str],
    model: WorldActionModel,
    codec: VideoCodec,
    *,
    embodiments: dict[str, dict[str, Any]],
    metadata: dict[str, Any] | None = None,
) -> str:
    """Writes the policy atomically; returns the transformer's sha256."""
    with atomic_directory(directory) as tmp:
        sha = save_checkpoint(tmp / TRANSFORMER_DIR, model, embodiments=embodiments, metadata=metadata)
        state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
        save_file(state, str(tmp / CODEC_FILE))
        record = {
            "format_version": POLICY_FORMAT,
            "transformer_sha256": sha,
            "codec_sha256": file_sha256(tmp / CODEC_FILE),
            "metadata": metadata or {},
        }
        (tmp / POLICY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return sha


def load_policy(
    directory: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedPolicy:
    """Loads and verifies a policy; `dtype` casts the transformer's and the VAE's floating weights.

    The latent statistics stay float32 (they are tiny and normalise every latent), and so does the
    text encoder: it runs once per instruction. None keeps the stored dtypes.
    """
    root = Path(directory)
    try:
        record = json.loads((root / POLICY_FILE).read_text())
    except FileNotFoundError:
        raise ValueError(f"{POLICY_FILE}: missing; {root} is not a policy directory") from None
    if record.get("format_version") != POLICY_FORMAT:
        raise ValueError(f"{POLICY_FILE}: unsupported format_version {record.get('format_version')!r}")
    checkpoint = load_checkpoint(root / TRANSFORMER_DIR, device, dtype)
    codec_path = root / CODEC_FILE
    if not codec_path.is_file() or file_sha256(codec_path) != record.get("codec_sha256"):
        raise ValueError(f"{CODEC_FILE}: missing or its sha256 does not match {POLICY_FILE}")
    codec = VideoCodec(checkpoint.config)
    codec.load_state_dict(load_file(str(codec_path)))
    codec.to(device).eval()
    if dtype is not None:
        vae: nn.Module = codec.vae  # typed as a plain module: diffusers' wrapped .to confuses mypy
        vae.to(dtype)  # the codec casts its inputs to the VAE's dtype
    text = TextEncoder(checkpoint.config.text).to(device)
    return LoadedPolicy(
        checkpoint.model,
        codec,
        text,
        checkpoint.config,
        checkpoint.embodiments,
        record["metadata"],
        checkpoint.sha256,
    )
