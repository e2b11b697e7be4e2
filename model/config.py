"""The World Action Model's configuration, with named presets from CPU-tiny to Wan-2.1-14B."""

from __future__ import annotations

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
    canvas_grid: tuple[int, int] = (1, 2)  # rows, cols of the tiled canvas
    # Chunks: what one denoising step produces.
    actions_per_chunk: int = 8
    video_frames_per_chunk: int = 4  # raw frames; a multiple of 4 (the Wan VAE encodes 4 at a time)
    context_chunks: int = 4  # chunks per training window (after the conditioning frame)
    max_cache_chunks: int = 8  # the KV cache resets (hard) after this many chunks
    max_action_dim: int = 32
    max_state_dim: int = 64
    embodiments: list[EmbodimentHeadConfig] = Field(default_factory=list)
    # Flow matching and sampling.
    flow_shift: float = 5.0
    inference_steps: int = 8
    dit_step_stride: int = 1  # run the DiT every n-th step, reuse its prediction in between
    cfg_scale: float = 1.0  # classifier-free guidance on video only; 1.0 = off
    action_loss_weight: float = 1.0

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
        if len(self.cameras) > self.canvas_grid[0] * self.canvas_grid[1]:
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
        if self.dit_step_stride < 1 or self.inference_steps < 1:
            raise ValueError("inference_steps and dit_step_stride must be >= 1")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def canvas_size(self) -> tuple[int, int]:
        return self.view_size[0] * self.canvas_grid[0], self.view_size[1] * self.canvas_grid[1]

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
_UMT5 = {"kind": "umt5", "dim": 4096, "max_tokens": 512}
_DREAMZERO_CHUNKS = {
    "actions_per_chunk": 24,
    "video_frames_per_chunk": 8,
    "inference_steps": 16,
    "dit_step_stride": 2,
}

PRESETS: dict[str, dict[str, Any]] = {
    # CI on CPU: ~0.2M parameters, 2 cameras at 32x32 tiled to 32x64.
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
    },
    # One GPU: ~40M parameters, 2 cameras at 128x128 tiled to 128x256, DreamZero chunking.
    "small": {
        "dim": 512,
        "num_layers": 8,
        "num_heads": 8,
        "ffn_dim": 2048,
        "vae": _WAN_VAE,
        "view_size": (128, 128),
    }
    | _DREAMZERO_CHUNKS,
    # Wan 2.1 shapes; load the backbone from a local directory of Wan weights.
    "wan2.1-1.3b": {
        "dim": 1536,
        "num_layers": 30,
        "num_heads": 12,
        "ffn_dim": 8960,
        "vae": _WAN_VAE,
        "text": _UMT5,
        "view_size": (240, 320),
        "cfg_scale": 5.0,
    }
    | _DREAMZERO_CHUNKS,
    "wan2.1-14b": {
        "dim": 5120,
        "num_layers": 40,
        "num_heads": 40,
        "ffn_dim": 13824,
        "vae": _WAN_VAE,
        "text": _UMT5,
        "view_size": (240, 320),
        "canvas_grid": (2, 2),
        "cfg_scale": 5.0,
    }
    | _DREAMZERO_CHUNKS,
}
