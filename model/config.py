"""The World Action Model's configuration, with named presets from CPU-tiny to Wan-2.1-14B."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VAEConfig(BaseModel):
    """diffusers AutoencoderKLWan arguments; `pretrained` loads real weights from a local dir."""

    model_config = ConfigDict(extra="forbid")

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: list[int] = Field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    temperal_downsample: list[bool] = Field(default_factory=lambda: [False, True, True])
    pretrained: Path | None = None

    @property
    def spatial_factor(self) -> int:
        return int(2 ** (len(self.dim_mult) - 1))

    @property
    def temporal_factor(self) -> int:
        return int(2 ** sum(self.temperal_downsample))


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["minilm", "umt5"] = "minilm"
    pretrained: Path | None = None  # UMT5 needs a local directory; MiniLM ships in a package
    max_tokens: int = 64
    dim: int = 384
    # Wan attends to all 512 (zeroed) padding tokens; a model trained that way must be run that way.
    mask_padding: bool = True


class ImageConditioningConfig(BaseModel):
    """Wan 2.1 I2V's first-frame conditioning, kept as DreamZero keeps it.

    Every video token's input gets `temporal_factor` mask channels (1 on the conditioning frame)
    and the VAE latents of [first frame, black frames...]; the cross-attention also sees the
    CLIP image tokens of the first frame (penultimate layer of a CLIP vision tower).
    """

    model_config = ConfigDict(extra="forbid")

    image_dim: int = 1280  # CLIP ViT-H/14 hidden size
    image_size: int = 224
    patch_size: int = 14
    layers: int = 32  # the random-weight tower's depth (a pretrained one brings its own config)
    heads: int = 16
    intermediate_size: int = 5120
    pretrained: Path | None = None  # a local transformers CLIPVisionModel directory (Wan's image_encoder)

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class EmbodimentHeadConfig(BaseModel):
    """An embodiment the model can act for: its true state and action sizes inside the padding."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state_dim: int = Field(ge=0)
    action_dim: int = Field(ge=0)


class WAMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = "custom"
    # Transformer (Wan naming: dim = heads * head_dim).
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 128
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    # Codec and conditioning.
    vae: VAEConfig = Field(default_factory=VAEConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    cameras: list[str] = Field(default_factory=lambda: ["exterior", "wrist"])
    view_size: tuple[int, int] = (32, 32)  # each camera is resized to this, then views are tiled
    # rows, cols of the tiled canvas; None picks the smallest near-square grid for the cameras
    canvas_grid: tuple[int, int] | None = None
    image_conditioning: ImageConditioningConfig | None = None  # Wan I2V first-frame channels + CLIP
    # Chunks: what one denoising step produces.
    actions_per_chunk: int = 8
    video_frames_per_chunk: int = 4  # raw frames; a multiple of 4 (the Wan VAE encodes 4 at a time)
    context_chunks: int = 4  # chunks per training window (after the conditioning frame)
    # The KV cache resets (hard, from the latest real frame) after this many chunks. It may not
    # exceed context_chunks: the model never saw a longer history (None = context_chunks).
    max_cache_chunks: int | None = None
    max_action_dim: int = 32
    max_state_dim: int = 64
    embodiments: list[EmbodimentHeadConfig] = Field(default_factory=list)
    # Flow matching: training draws the noise level as DreamZero does (uniform before the shift,
    # i.e. uniform on the shifted grid the sampler walks, loss weighted toward mid noise).
    flow_shift: float = 5.0
    train_sigmas: Literal["uniform", "logit_normal"] = "uniform"
    loss_weighting: Literal["bell", "none"] = "bell"
    action_loss_weight: float = Field(default=1.0, ge=0)
    # 0 trains the same backbone on the action loss alone (a direct action regressor, the VLA
    # baseline of DreamZero's WAM-vs-VLA comparison): video tokens are still inputs, never targets.
    video_loss_weight: float = Field(default=1.0, ge=0)
    # Sampling.
    inference_steps: int = 8
    solver: Literal["unipc", "euler"] = "unipc"
    # Steps (0-based) on which the DiT runs; the others reuse its last prediction. None = all.
    dit_steps: list[int] | None = None
    cfg_scale: float = 1.0  # classifier-free guidance on video only; 1.0 = off
    # Self-attention kernel: "blocks" runs one mask-free SDPA call per block of the block-causal
    # mask (flash / memory-efficient kernels on CUDA, no (L, L) mask or scores; faster on CPU
    # too), "dense" one call with a boolean mask (the reference).
    attention: Literal["blocks", "dense"] = "blocks"

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """Configs written before dit_steps said `dit_step_stride: n` (every n-th step)."""
        if isinstance(data, dict) and "dit_step_stride" in data:
            data = dict(data)
            stride = data.pop("dit_step_stride")
            if not isinstance(stride, int) or stride < 1:
                raise ValueError("dit_step_stride: must be an integer >= 1")
            if stride > 1 and data.get("dit_steps") is None:
                data["dit_steps"] = list(range(0, int(data.get("inference_steps", 8)), stride))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.dim % self.num_heads:
            raise ValueError(f"dim: {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError("dim: the head dimension must be even for rotary embeddings")
        if self.video_frames_per_chunk % 4:
            raise ValueError("video_frames_per_chunk: must be a multiple of 4 (the Wan VAE's frame group)")
        if self.video_frames_per_chunk % self.vae.temporal_factor:
            raise ValueError("video_frames_per_chunk: must be a multiple of the VAE's temporal factor")
        if self.actions_per_chunk % self.video_frames_per_chunk:
            raise ValueError("actions_per_chunk: must be a multiple of video_frames_per_chunk")
        if not self.cameras:
            raise ValueError("cameras: at least one camera")
        rows, cols = self.grid
        if len(self.cameras) > rows * cols:
            raise ValueError(f"canvas_grid: {self.canvas_grid} has no room for {len(self.cameras)} cameras")
        canvas_h, canvas_w = self.canvas_size
        unit = self.vae.spatial_factor * self.patch_size[1]
        if canvas_h % unit or canvas_w % unit:
            raise ValueError(f"view_size: the canvas {self.canvas_size} must be divisible by {unit}")
        names = [e.name for e in self.embodiments]
        if len(set(names)) != len(names):
            raise ValueError("embodiments: names must be unique")
        for e in self.embodiments:
            if e.action_dim > self.max_action_dim or e.state_dim > self.max_state_dim:
                raise ValueError(f"embodiments: {e.name!r} exceeds max_action_dim/max_state_dim")
        if self.inference_steps < 1:
            raise ValueError("inference_steps: must be >= 1")
        if self.dit_steps is not None:
            steps = self.dit_steps
            if not steps or steps[0] != 0 or sorted(set(steps)) != steps or steps[-1] >= self.inference_steps:
                raise ValueError(
                    f"dit_steps: must start at 0 and increase strictly within [0, {self.inference_steps}), "
                    f"got {steps}"
                )
        if self.context_chunks < 1:
            raise ValueError("context_chunks: must be >= 1")
        if self.max_cache_chunks is not None and not 1 <= self.max_cache_chunks <= self.context_chunks:
            raise ValueError(
                f"max_cache_chunks: {self.max_cache_chunks} must be within [1, context_chunks="
                f"{self.context_chunks}]; a longer cache holds history the model was never trained on"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Rows, cols of the canvas: as configured, or the near-square grid for the camera count
        (1 -> 1x1, 2 -> 1x2, 3-4 -> 2x2, 5-6 -> 2x3 ...), so no canvas is mostly black."""
        if self.canvas_grid is not None:
            return self.canvas_grid
        n = max(1, len(self.cameras))
        rows = max(1, math.isqrt(n))
        while rows * rows < n and rows * (rows + 1) < n:
            rows += 1
        cols = math.ceil(n / rows)
        return rows, cols

    @property
    def canvas_size(self) -> tuple[int, int]:
        rows, cols = self.grid
        return self.view_size[0] * rows, self.view_size[1] * cols

    @property
    def cache_chunks(self) -> int:
        """Chunks the KV cache holds before a hard reset (never beyond the trained context)."""
        return self.max_cache_chunks if self.max_cache_chunks is not None else self.context_chunks

    @property
    def dit_step_mask(self) -> list[bool]:
        run = set(range(self.inference_steps) if self.dit_steps is None else self.dit_steps)
        return [i in run for i in range(self.inference_steps)]

    @property
    def mask_channels(self) -> int:
        """Wan I2V's mask channels: one per raw frame folded into a latent frame."""
        return self.vae.temporal_factor if self.image_conditioning is not None else 0

    @property
    def in_channels(self) -> int:
        """The patch embedding's input: noisy latents (+ mask + first-frame latents for I2V)."""
        extra = self.mask_channels + self.vae.z_dim if self.image_conditioning is not None else 0
        return self.vae.z_dim + extra

    @property
    def latent_frames_per_chunk(self) -> int:
        return self.video_frames_per_chunk // self.vae.temporal_factor

    @property
    def latent_hw(self) -> tuple[int, int]:
        h, w = self.canvas_size
        return h // self.vae.spatial_factor, w // self.vae.spatial_factor

    @property
    def tokens_per_latent_frame(self) -> int:
        h, w = self.latent_hw
        return (h // self.patch_size[1]) * (w // self.patch_size[2])

    @property
    def action_stride(self) -> int:
        """Control steps per video frame (DreamZero: 24 actions over 8 frames = 3)."""
        return self.actions_per_chunk // self.video_frames_per_chunk

    def embodiment(self, name: str) -> EmbodimentHeadConfig:
        for e in self.embodiments:
            if e.name == name:
                return e
        raise KeyError(
            f"embodiment: the model has no head for {name!r}; known {[e.name for e in self.embodiments]}"
        )

    @classmethod
    def preset_named(cls, name: str, **overrides: Any) -> WAMConfig:
        if name not in PRESETS:
            raise ValueError(f"preset: unknown {name!r}; choose from {sorted(PRESETS)}")
        data: dict[str, Any] = dict(PRESETS[name]) | {"preset": name}
        for key, value in overrides.items():  # nested sections merge: vae={"pretrained": ...} keeps the rest
            base = data.get(key)
            data[key] = base | value if isinstance(base, dict) and isinstance(value, dict) else value
        return cls.model_validate(data)


_TINY_VAE = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True],
}
_WAN_VAE = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
}
# The small preset's codec: Wan's VAE architecture and latent geometry (16 channels, 8x spatial,
# 4x temporal, so the DiT sees what it would see with Wan's), at 1/6 the width and one residual
# block per level: 2.6M parameters instead of 127M. On one CPU thread it encodes a chunk of 8
# frames at 2x128x128 in ~4 s against Wan's ~71 s, below small's ~6 s of denoising (benchmarks/
# serving.py). Random and frozen like tiny's, so training and serving share it through the config;
# for Wan's own weights set vae=_WAN_VAE fields plus `pretrained`.
_LIGHT_VAE = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}
_UMT5 = {"kind": "umt5", "dim": 4096, "max_tokens": 512, "mask_padding": False}
# DreamZero's chunking and sampler: 16 UniPC steps, the DiT on 8 of them (its step mask: sigma
# 1.0, 0.987, 0.972, 0.893, 0.75, 0.536, 0.417, 0.25, so the last steps are still computed).
_DREAMZERO_CHUNKS = {
    "actions_per_chunk": 24,
    "video_frames_per_chunk": 8,
    "inference_steps": 16,
    "dit_steps": [0, 1, 2, 6, 10, 13, 14, 15],
    "solver": "unipc",
}
# DreamZero's canvas: 176x320 views; three cameras tile 2x2 into 352x640 = 880 tokens per frame.
_WAN_VIEW = (176, 320)

PRESETS: dict[str, dict[str, Any]] = {
    # CI on CPU: ~0.2M parameters, 2 cameras at 32x32 tiled to 32x64 (1x2).
    "tiny": {
        "dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "ffn_dim": 128,
        "vae": _TINY_VAE,
        "view_size": (32, 32),
        "actions_per_chunk": 8,
        "video_frames_per_chunk": 4,
        "inference_steps": 4,
        # Euler: on this CPU preset UniPC gave the same action error (benchmarks/sampling.py) and
        # its scheduler costs more than a tiny DiT call.
        "solver": "euler",
    },
    # One GPU: ~40M parameters, 2 cameras at 128x128 tiled to 128x256 (1x2), DreamZero chunking,
    # the light Wan-shaped codec.
    "small": {
        "dim": 512,
        "num_layers": 8,
        "num_heads": 8,
        "ffn_dim": 2048,
        "vae": _LIGHT_VAE,
        "view_size": (128, 128),
    }
    | _DREAMZERO_CHUNKS,
    # Wan 2.1 T2V 1.3B shapes; load the backbone from a local directory of Wan weights.
    "wan2.1-1.3b": {
        "dim": 1536,
        "num_layers": 30,
        "num_heads": 12,
        "ffn_dim": 8960,
        "vae": _WAN_VAE,
        "text": _UMT5,
        "view_size": _WAN_VIEW,
        "cfg_scale": 5.0,
    }
    | _DREAMZERO_CHUNKS,
    # Wan 2.1 I2V 14B (DreamZero's backbone): first-frame channels and CLIP image context kept.
    "wan2.1-14b": {
        "dim": 5120,
        "num_layers": 40,
        "num_heads": 40,
        "ffn_dim": 13824,
        "vae": _WAN_VAE,
        "text": _UMT5,
        "view_size": _WAN_VIEW,
        "image_conditioning": {},
        "cfg_scale": 5.0,
    }
    | _DREAMZERO_CHUNKS,
}
