"""The video codec: multi-camera frames <-> normalised Wan VAE latents.

Why tile the cameras into one canvas: like DreamZero, every view is resized to `cfg.view_size`
and placed row-major into a `cfg.canvas_grid` canvas (empty cells black). The model then sees
one video stream, so there is one VAE pass and one latent token grid per frame (the DiT, its
rotary positions and KV cache stay single-stream), while each view keeps its own resolution
instead of being squeezed side by side. The camera order is the order of `cfg.cameras`, fixed
by the config, so a view always lands in the same cell during training and at inference.

History latents must match between training and inference: a chunk is always encoded the
same local way, `encode([previous frame] + chunk)` minus the first latent (`encode_chunk`),
both when training windows are built (`encode_window`) and after each executed chunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan, WanRMS_norm
from numpy.typing import NDArray
from torch import Tensor, nn

from wamfleet.model.config import WAMConfig
from wamfleet.model.image import ImageEncoder

Frames: TypeAlias = NDArray[np.uint8] | Tensor


def _as_uint8(x: Frames, name: str, ndim: int | None = None) -> Tensor:
    """Checks camera frames (..., H, W, 3) uint8 and returns them as a tensor (no copy if possible)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a uint8 array or tensor, got {type(x).__name__}")
    if t.dtype != torch.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.ndim < 4 or t.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (..., V, H, W, 3), got {tuple(t.shape)}")
    return t


class _FastRMSNorm(WanRMS_norm):
    """Wan's RMS norm with F.normalize written out as sum -> rsqrt -> multiply: the same math (its
    1e-12 floor included), but F.normalize over the channel dim of a 5-D tensor is ~10x slower on
    CPU, and the VAE runs ~24 of these per encoded chunk, most of the serving encode stage."""

    def forward(self, x: Tensor) -> Tensor:
        dim = 1 if self.channel_first else -1
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        inv = y.square().sum(dim, keepdim=True).clamp_min(1e-24).rsqrt()
        out: Tensor = (y * inv).to(x.dtype) * self.scale * self.gamma + self.bias
        return out


def _fast_norms(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """Swaps every WanRMS_norm for _FastRMSNorm in place (same parameters, same state dict)."""
    for module in vae.modules():
        if type(module) is WanRMS_norm:
            module.__class__ = _FastRMSNorm
    return vae


def random_vae(cfg: WAMConfig) -> AutoencoderKLWan:
    """diffusers' Wan VAE of the configured shape, random weights, identity latent statistics."""
    v = cfg.vae
    vae: AutoencoderKLWan = AutoencoderKLWan(
        base_dim=v.base_dim,
        z_dim=v.z_dim,
        dim_mult=list(v.dim_mult),
        num_res_blocks=v.num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(v.temperal_downsample),
        latents_mean=[0.0] * v.z_dim,
        latents_std=[1.0] * v.z_dim,
        scale_factor_temporal=v.temporal_factor,
        scale_factor_spatial=v.spatial_factor,
    )
    return vae


def _pretrained_vae(cfg: WAMConfig) -> AutoencoderKLWan:
    """Loads Wan VAE weights from a local dir after checking they produce the configured latents."""
    assert cfg.vae.pretrained is not None
    path = cfg.vae.pretrained
    if not path.is_dir():
        raise ValueError(f"vae.pretrained: {path} is not a directory")
    saved: dict[str, Any] = dict(AutoencoderKLWan.load_config(path))
    z_dim = int(saved.get("z_dim", 16))
    if z_dim != cfg.vae.z_dim:
        raise ValueError(f"vae.z_dim: the config says {cfg.vae.z_dim}, the weights in {path} have {z_dim}")
    spatial = 2 ** (len(saved.get("dim_mult", [1, 2, 4, 4])) - 1) * int(saved.get("patch_size") or 1)
    if spatial != cfg.vae.spatial_factor:
        raise ValueError(
            f"vae.dim_mult: spatial factor {cfg.vae.spatial_factor} in the config, {spatial} in {path}"
        )
    temporal = 2 ** sum(bool(b) for b in saved.get("temperal_downsample", [False, True, True]))
    if temporal != cfg.vae.temporal_factor:
        raise ValueError(
            f"vae.temperal_downsample: temporal factor {cfg.vae.temporal_factor} in the config, "
            f"{temporal} in {path}"
        )
    for key in ("latents_mean", "latents_std"):
        if len(saved.get(key) or []) != z_dim:
            raise ValueError(f"vae.pretrained: {key} in {path} does not have z_dim={z_dim} entries")
    vae: AutoencoderKLWan = AutoencoderKLWan.from_pretrained(path, local_files_only=True)
    return vae


class VideoCodec(nn.Module):
    """A frozen Wan VAE plus camera tiling and per-channel latent normalisation."""

    latents_mean: Tensor
    latents_std: Tensor

    def __init__(self, cfg: WAMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        v = cfg.vae
        if v.pretrained is not None:
            self.vae = _pretrained_vae(cfg)
            mean = torch.tensor(self.vae.config["latents_mean"], dtype=torch.float32)
            std = torch.tensor(self.vae.config["latents_std"], dtype=torch.float32)
        else:
            # Random weights have no known latent statistics: identity until fit_latent_stats.
            self.vae = random_vae(cfg)
            mean, std = torch.zeros(v.z_dim), torch.ones(v.z_dim)
        self.register_buffer("latents_mean", mean)
        self.register_buffer("latents_std", std)
        _fast_norms(self.vae).eval().requires_grad_(False)
        # Wan I2V's CLIP tower: part of the codec, so shards, training and serving share its weights.
        image = cfg.image_conditioning
        self.image_encoder = ImageEncoder(image) if image is not None else None

    @property
    def device(self) -> torch.device:
        return self.latents_mean.device

    # Pixels --------------------------------------------------------------------------------

    def tile(self, frames: Frames) -> Tensor:
        """(..., V, H, W, 3) uint8 -> (..., 3, canvas_h, canvas_w) float in [-1, 1]."""
        x = _as_uint8(frames, "frames")
        cams = len(self.cfg.cameras)
        if x.shape[-4] != cams:
            raise ValueError(
                f"frames: expected {cams} camera views {self.cfg.cameras} at dim -4, "
                f"got shape {tuple(x.shape)}"
            )
        lead, (h, w) = x.shape[:-4], x.shape[-3:-1]
        views = x.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N*V, 3, H, W)
        vh, vw = self.cfg.view_size
        if (h, w) != (vh, vw):
            views = F.interpolate(views, size=(vh, vw), mode="bilinear", antialias=True, align_corners=False)
        views = views.reshape(-1, cams, 3, vh, vw)
        canvas_h, canvas_w = self.cfg.canvas_size
        canvas = views.new_full((views.shape[0], 3, canvas_h, canvas_w), -1.0)
        cols = self.cfg.grid[1]
        for i in range(cams):
            r, c = divmod(i, cols)
            canvas[:, :, r * vh : (r + 1) * vh, c * vw : (c + 1) * vw] = views[:, i]
        return canvas.reshape(*lead, 3, canvas_h, canvas_w)

    # Latents -------------------------------------------------------------------------------

    @torch.no_grad()
    def _raw_latents(self, frames: Tensor) -> Tensor:
        """uint8 (B, T, V, H, W, 3) -> unnormalised latents (B, C, F, h, w) float32 (the mode)."""
        if (frames.shape[1] - 1) % 4:
            raise ValueError(f"frames: the frame count must be 1 + 4n, got {frames.shape[1]}")
        dtype = next(self.vae.parameters()).dtype
        video = self.tile(frames.to(self.device)).permute(0, 2, 1, 3, 4).to(dtype)  # (B, 3, T, H, W)
        latents: Tensor = self.vae.encode(video).latent_dist.mode()
        return latents.float()

    def _stats(self) -> tuple[Tensor, Tensor]:
        return self.latents_mean.view(1, -1, 1, 1, 1), self.latents_std.view(1, -1, 1, 1, 1)

    def encode(self, frames: Frames) -> Tensor:
        """uint8 (B, 1 + 4n, V, H, W, 3) -> normalised latents (B, C, 1 + 4n / temporal_factor, h, w)."""
        z = self._raw_latents(_as_uint8(frames, "frames", ndim=6))
        mean, std = self._stats()
        return (z - mean) / std

    def encode_chunk(self, prev_frame: Frames, chunk: Frames) -> Tensor:
        """The chunk's latents (B, C, latent_frames_per_chunk, h, w), encoded after its previous frame."""
        prev = _as_uint8(prev_frame, "prev_frame", ndim=5)
        x = _as_uint8(chunk, "chunk", ndim=6)
        n = self.cfg.video_frames_per_chunk
        if x.shape[1] != n or x.shape[0] != prev.shape[0] or x.shape[2:] != prev.shape[1:]:
            raise ValueError(
                f"chunk: expected shape (B, {n}, V, H, W, 3) matching prev_frame {tuple(prev.shape)}, "
                f"got {tuple(x.shape)}"
            )
        return self.encode(torch.cat([prev[:, None].to(x.device), x], dim=1))[:, :, 1:]

    def encode_window(self, frames: Frames) -> tuple[Tensor, Tensor]:
        """(B, 1 + K * video_frames_per_chunk, ...) -> (cond (B, C, 1, h, w), chunks (B, C, K * Fc, h, w)).

        Each chunk goes through `encode_chunk` (all K at once, folded into the batch).
        """
        x = _as_uint8(frames, "frames", ndim=6)
        n = self.cfg.video_frames_per_chunk
        if (x.shape[1] - 1) % n or x.shape[1] == 1:
            raise ValueError(f"frames: expected 1 + K * {n} frames (K >= 1), got {x.shape[1]}")
        b, k, rest = x.shape[0], (x.shape[1] - 1) // n, x.shape[2:]
        cond = self.encode(x[:, :1])
        prev = x[:, 0 : k * n : n].reshape(b * k, *rest)
        chunks = self.encode_chunk(prev, x[:, 1:].reshape(b * k, n, *rest))  # (B*K, C, Fc, h, w)
        _, c, fc, h, w = chunks.shape
        chunks = chunks.reshape(b, k, c, fc, h, w).transpose(1, 2).reshape(b, c, k * fc, h, w)
        return cond, chunks

    @torch.no_grad()
    def first_frame_conditioning(self, frame: Frames, latent_frames: int) -> tuple[Tensor, Tensor]:
        """Everything Wan I2V is told about a conditioning frame (B, V, H, W, 3): its CLIP image
        tokens (B, tokens, image_dim) and its first-frame channels over `latent_frames`."""
        if self.image_encoder is None:
            raise ValueError("image_conditioning: this model config has no I2V conditioning")
        x = _as_uint8(frame, "frame", ndim=5).to(self.device)
        return self.image_encoder.encode(self.tile(x)), self.first_frame_channels(x, latent_frames)

    @torch.no_grad()
    def first_frame_channels(self, frame: Frames, latent_frames: int) -> Tensor:
        """Wan I2V's conditioning channels (B, temporal_factor + C, latent_frames, h, w) for a
        conditioning frame (B, V, H, W, 3): the mask (1 on the first latent frame, as Wan folds
        one mask per raw frame) and the normalised latents of [first frame, then zeros] (mid
        grey in [-1, 1]), exactly as Wan's I2V pipeline and DreamZero build them."""
        x = _as_uint8(frame, "frame", ndim=5)
        first = self.tile(x.to(self.device))  # (B, 3, Hc, Wc)
        factor = self.cfg.vae.temporal_factor
        raw = 1 + (latent_frames - 1) * factor
        video = torch.zeros(first.shape[0], 3, raw, *first.shape[-2:], device=first.device)
        video[:, :, 0] = first
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode(video.to(dtype)).latent_dist.mode().float()
        mean, std = self._stats()
        latents = (z - mean) / std
        mask = torch.zeros(first.shape[0], factor, latent_frames, *latents.shape[-2:], device=latents.device)
        mask[:, :, 0] = 1.0
        return torch.cat([mask, latents], dim=1)

    @torch.no_grad()
    def fit_latent_stats(self, videos: Frames | Iterable[Frames]) -> None:
        """Sets the per-channel mean/std from real clips (each (B, 1 + 4n, V, H, W, 3) uint8).

        Random VAE weights have arbitrary latent scales; the DiT's flow matching assumes roughly
        unit-variance latents, so they are measured on data rather than assumed.
        """
        clips: Iterable[Frames] = [videos] if isinstance(videos, np.ndarray | Tensor) else videos
        c = self.cfg.vae.z_dim
        total, total_sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
        for clip in clips:
            z = self._raw_latents(_as_uint8(clip, "videos", ndim=6)).double().transpose(0, 1).reshape(c, -1)
            total += z.sum(dim=1).cpu()
            total_sq += (z * z).sum(dim=1).cpu()
            count += z.shape[1]
        if count == 0:
            raise ValueError("videos: no clips to fit latent statistics on")
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
        self.latents_mean.copy_(mean.float())
        self.latents_std.copy_(std.float())

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents (B, C, F, h, w) -> uint8 canvas frames (B, T, canvas_h, canvas_w, 3).

        The first latent frame decodes to one frame, each later one to temporal_factor frames.
        """
        if latents.ndim != 5 or latents.shape[1] != self.cfg.vae.z_dim:
            raise ValueError(
                f"latents: expected (B, {self.cfg.vae.z_dim}, F, h, w), got shape {tuple(latents.shape)}"
            )
        mean, std = self._stats()
        dtype = next(self.vae.parameters()).dtype
        z = (latents.to(self.device).float() * std + mean).to(dtype)
        video: Tensor = self.vae.decode(z).sample  # (B, 3, T, H, W) in [-1, 1]
        pixels = ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 4, 1)
