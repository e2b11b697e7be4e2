"""The video codec: camera tiling, chunk-local encoding, latent statistics, pretrained loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

from wamfleet.model.config import WAMConfig
from wamfleet.model.vae import VideoCodec, random_vae

torch.set_num_threads(1)


def tiny(**overrides: object) -> WAMConfig:
    return WAMConfig.preset_named("tiny", **overrides)


def codec(seed: int = 0, **overrides: object) -> VideoCodec:
    torch.manual_seed(seed)
    return VideoCodec(tiny(**overrides))


def clip(batch: int, frames: int, seed: int = 0, views: int = 2, size: int = 32) -> np.ndarray:
    """Smooth moving patterns, so the latents are not pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((batch, frames, views, size, size, 3), dtype=np.uint8)
    for b in range(batch):
        phase = rng.uniform(0, 6, size=(views, 3))
        for t in range(frames):
            for v in range(views):
                for ch in range(3):
                    img = 128 + 100 * np.sin(6 * xx + 3 * yy * (ch + 1) + phase[v, ch] + 0.4 * t)
                    out[b, t, v, :, :, ch] = img.astype(np.uint8)
    return out


def test_tile_places_each_view_in_its_cell() -> None:
    c = codec()
    frames = np.zeros((2, 2, 32, 32, 3), dtype=np.uint8)  # (T, V, H, W, 3)
    frames[:, 0] = 255  # exterior white, wrist black
    frames[1, 1, :, :, 0] = 255  # frame 1: wrist red
    canvas = c.tile(frames)
    assert canvas.shape == (2, 3, 32, 64)
    assert canvas.dtype == torch.float32
    assert torch.all(canvas[:, :, :, :32] == 1.0)
    assert torch.all(canvas[0, :, :, 32:] == -1.0)
    assert torch.all(canvas[1, 0, :, 32:] == 1.0)
    assert torch.all(canvas[1, 1:, :, 32:] == -1.0)


def test_tile_resizes_views_and_leaves_empty_cells_black() -> None:
    c = codec(cameras=["front"], canvas_grid=(2, 2))
    frames = torch.full((1, 1, 48, 64, 3), 255, dtype=torch.uint8)  # (B, V, H, W, 3), not view_size
    canvas = c.tile(frames)
    assert canvas.shape == (1, 3, 64, 64)
    assert torch.allclose(canvas[..., :32, :32], torch.tensor(1.0))
    assert torch.all(canvas[..., 32:, :] == -1.0)
    assert torch.all(canvas[..., :, 32:] == -1.0)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((1, 3, 32, 32, 3), dtype=np.uint8), "frames: expected 2 camera views"),
        (np.zeros((1, 2, 32, 32, 3), dtype=np.float32), "frames: expected dtype uint8"),
        (np.zeros((1, 2, 32, 32, 4), dtype=np.uint8), r"frames: expected shape \(\.\.\., V, H, W, 3\)"),
        ([[1, 2, 3]], "frames: expected a uint8 array or tensor"),
    ],
)
def test_tile_rejects_wrong_inputs(frames: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec().tile(frames)  # type: ignore[arg-type]


def test_encode_shapes_for_the_tiny_preset() -> None:
    c = codec()
    cfg = c.cfg
    z = c.encode(clip(2, 9))
    tf = cfg.vae.temporal_factor
    assert z.shape == (2, cfg.vae.z_dim, 1 + 8 // tf, *cfg.latent_hw)
    assert z.dtype == torch.float32
    assert torch.equal(z, c.encode(clip(2, 9)))  # deterministic: the distribution's mode


def test_encode_rejects_wrong_inputs() -> None:
    c = codec()
    with pytest.raises(ValueError, match=r"frames: the frame count must be 1 \+ 4n"):
        c.encode(clip(1, 4))
    with pytest.raises(ValueError, match="frames: expected 6 dimensions"):
        c.encode(clip(1, 5)[0])
    with pytest.raises(ValueError, match="chunk: expected shape"):
        c.encode_chunk(clip(1, 1)[:, 0], clip(1, 3))
    with pytest.raises(ValueError, match="prev_frame: expected 5 dimensions"):
        c.encode_chunk(clip(1, 1), clip(1, 4))
    with pytest.raises(ValueError, match="latents: expected"):
        c.decode(torch.zeros(1, 3, 1, 8, 16))


def test_encode_window_is_cond_plus_per_chunk_encodes() -> None:
    c = codec()
    cfg = c.cfg
    n, k = cfg.video_frames_per_chunk, 3
    frames = clip(2, 1 + k * n, seed=3)
    cond, chunks = c.encode_window(frames)
    fc = cfg.latent_frames_per_chunk
    assert cond.shape == (2, cfg.vae.z_dim, 1, *cfg.latent_hw)
    assert chunks.shape == (2, cfg.vae.z_dim, k * fc, *cfg.latent_hw)
    assert torch.allclose(cond, c.encode(frames[:, :1]), atol=1e-5)
    for i in range(k):
        one = c.encode_chunk(frames[:, i * n], frames[:, 1 + i * n : 1 + (i + 1) * n])
        assert one.shape == (2, cfg.vae.z_dim, fc, *cfg.latent_hw)
        assert torch.allclose(chunks[:, :, i * fc : (i + 1) * fc], one, atol=1e-5)
    # The first chunk is the same as encoding the conditioning frame and the chunk together.
    assert torch.allclose(chunks[:, :, :fc], c.encode(frames[:, : 1 + n])[:, :, 1:], atol=1e-5)


def test_fit_latent_stats_normalises_the_data_it_was_fit_on() -> None:
    c = codec()
    videos = [clip(2, 5, seed=s) for s in range(2)]
    raw = c.encode(videos[0])  # identity statistics before fitting
    assert torch.all(c.latents_mean == 0) and torch.all(c.latents_std == 1)
    assert raw.abs().mean() > 0
    c.fit_latent_stats(iter(videos))
    z = torch.cat([c.encode(v) for v in videos]).transpose(0, 1).reshape(c.cfg.vae.z_dim, -1)
    assert torch.allclose(z.mean(dim=1), torch.zeros(c.cfg.vae.z_dim), atol=1e-3)
    assert torch.allclose(z.std(dim=1, unbiased=False), torch.ones(c.cfg.vae.z_dim), atol=1e-3)
    # The statistics are buffers: they travel with the state dict.
    assert torch.equal(c.state_dict()["latents_std"], c.latents_std)


def test_decode_shape_and_dtype() -> None:
    c = codec()
    cfg = c.cfg
    z = c.encode(clip(1, 5))
    frames = c.decode(z)
    assert frames.shape == (1, 5, *cfg.canvas_size, 3)
    assert frames.dtype == torch.uint8


def save_tiny_vae(path: Path, z_dim: int = 4) -> AutoencoderKLWan:
    torch.manual_seed(7)
    vae: AutoencoderKLWan = AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True],
        latents_mean=[0.1 * i for i in range(z_dim)],
        latents_std=[1.0 + 0.5 * i for i in range(z_dim)],
    )
    vae.eval()
    vae.save_pretrained(path)
    return vae


def test_pretrained_weights_round_trip(tmp_path: Path) -> None:
    saved = save_tiny_vae(tmp_path / "vae")
    c = codec(seed=123, vae={**tiny().vae.model_dump(), "pretrained": tmp_path / "vae"})
    for name, tensor in saved.state_dict().items():
        assert torch.equal(c.vae.state_dict()[name], tensor), name
    assert torch.allclose(c.latents_std, torch.tensor([1.0, 1.5, 2.0, 2.5]))
    frames = clip(1, 5)
    with torch.no_grad():
        video = c.tile(frames).permute(0, 2, 1, 3, 4)
        expected = saved.encode(video).latent_dist.mode()
    mean, std = c.latents_mean.view(1, -1, 1, 1, 1), c.latents_std.view(1, -1, 1, 1, 1)
    # Not bit-equal: the codec's RMS norms round differently from diffusers' (same math).
    assert torch.allclose(c.encode(frames), (expected - mean) / std, atol=1e-5)


def test_pretrained_weights_must_match_the_config(tmp_path: Path) -> None:
    save_tiny_vae(tmp_path / "vae", z_dim=8)
    vae = {**tiny().vae.model_dump(), "pretrained": tmp_path / "vae"}
    with pytest.raises(ValueError, match=r"vae\.z_dim"):
        VideoCodec(tiny(vae=vae))
    with pytest.raises(ValueError, match=r"vae\.temperal_downsample"):
        VideoCodec(tiny(vae={**vae, "z_dim": 8, "temperal_downsample": [False, False]}))
    with pytest.raises(ValueError, match=r"vae\.pretrained"):
        VideoCodec(tiny(vae={**vae, "pretrained": tmp_path / "missing"}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_rms_norms_compute_what_diffusers_wan_rms_norm_computes(dtype: torch.dtype) -> None:
    """The codec swaps diffusers' WanRMS_norm for a faster equal one: same latents, same weights."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    fast = codec(seed=3)
    reference = random_vae(tiny()).eval()  # diffusers' own, norms untouched
    assert any(type(m) is WanRMS_norm for m in reference.modules())
    assert not any(type(m) is WanRMS_norm for m in fast.vae.modules())
    assert fast.vae.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(fast.vae.state_dict())
    for vae in (fast.vae, reference):
        for param in vae.parameters():
            param.data = param.data.to(dtype)
    video = fast.tile(torch.from_numpy(clip(1, 5))).permute(0, 2, 1, 3, 4).to(dtype)
    with torch.no_grad():
        ours = fast.vae.encode(video).latent_dist.mode().float()
        theirs = reference.encode(video).latent_dist.mode().float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(ours, theirs, atol=tol * theirs.abs().max().item()), (ours - theirs).abs().max()
