"""Wan I2V conditioning end to end on a tiny model: codec, training step, cached sampling, serving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.model.wam_support import EMBODIMENTS, masks, synthetic_batch
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.model.config import ImageConditioningConfig, WAMConfig
from wamfleet.model.image import ImageEncoder
from wamfleet.model.objective import WAMBatch, check_batch, flow_matching_loss
from wamfleet.model.policy import load_policy, save_policy
from wamfleet.model.sampler import ChunkSampler
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.serving.engine import InferRequest, PolicyEngine

torch.set_num_threads(1)
TINY_CLIP = {
    "image_dim": 32,
    "layers": 1,
    "heads": 2,
    "intermediate_size": 64,
    "image_size": 28,
    "patch_size": 14,
}


def i2v_config(**overrides: object) -> WAMConfig:
    return WAMConfig.preset_named("tiny", embodiments=EMBODIMENTS, image_conditioning=TINY_CLIP, **overrides)


def frames(seed: int, count: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, count, 2, 32, 32, 3), generator=g, dtype=torch.uint8)


def test_the_codec_builds_wan_first_frame_channels_and_clip_tokens() -> None:
    cfg = i2v_config()
    codec = VideoCodec(cfg)
    image, channels = codec.first_frame_conditioning(frames(0)[:, 0], latent_frames=5)
    assert image.shape == (1, 5, 32)
    assert channels.shape == (1, 2 + 4, 5, *cfg.latent_hw)
    assert torch.equal(channels[:, :2, 0], torch.ones_like(channels[:, :2, 0]))  # the mask: frame 0 only
    assert torch.count_nonzero(channels[:, :2, 1:]) == 0
    # The first latent frame of the channels is the conditioning frame's own latent.
    torch.testing.assert_close(channels[:, 2:, :1], codec.encode(frames(0)), rtol=0, atol=1e-5)


def i2v_batch(cfg: WAMConfig, codec: VideoCodec, chunks: int = 2) -> WAMBatch:
    batch = synthetic_batch(cfg, batch=1, chunks=chunks)
    batch.image, batch.first_frame_channels = codec.first_frame_conditioning(
        frames(1)[:, 0], 1 + chunks * cfg.latent_frames_per_chunk
    )
    return batch


def test_a_training_step_needs_and_uses_the_conditioning() -> None:
    cfg = i2v_config()
    torch.manual_seed(0)
    model, codec = WorldActionModel(cfg).train(), VideoCodec(cfg)
    batch = i2v_batch(cfg, codec)
    loss = flow_matching_loss(model, batch, torch.Generator().manual_seed(0))
    loss.loss.backward()
    assert model.patch_embedding.weight.grad is not None
    assert model.condition_embedder.image_embedder.ff.net[0].proj.weight.grad is not None  # type: ignore[union-attr]
    batch.image = None
    with pytest.raises(ValueError, match=r"batch\.image: required"):
        check_batch(model, batch)


def test_cached_i2v_sampling_equals_recomputation() -> None:
    cfg = i2v_config()
    torch.manual_seed(0)
    model, codec = WorldActionModel(cfg).eval(), VideoCodec(cfg)
    batch = i2v_batch(cfg, codec, chunks=3)
    image, channels = codec.first_frame_conditioning(frames(1)[:, 0], 1 + cfg.cache_chunks * 2)
    am, sm = masks(cfg, "sawyer", 1)
    outs = []
    for use_cache in (True, False):
        sampler = ChunkSampler(model, use_cache=use_cache)
        session = sampler.start(batch.cond, batch.text, batch.text_mask, image=image, channels=channels)
        run = []
        for c in range(3):
            pred = sampler.predict(
                session, batch.states[:, c], sm, am, ["sawyer"], torch.Generator().manual_seed(c)
            )
            run.append(pred.actions)
            sampler.observe(session, batch.video[:, :, 2 * c : 2 * c + 2])
        outs.append(torch.stack(run))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="image, channels"):
        ChunkSampler(model).start(batch.cond, batch.text)


def test_an_i2v_policy_is_served(tmp_path: Path) -> None:
    cfg = WAMConfig.preset_named(
        "tiny",
        embodiments=[{"name": "sawyer-metaworld", "state_dim": 39, "action_dim": 4}],
        image_conditioning=TINY_CLIP,
    )
    torch.manual_seed(0)
    entry = {"spec": sawyer_embodiment(32).model_dump(mode="json"), "action_norm": None, "state_norm": None}
    save_policy(
        tmp_path / "p", WorldActionModel(cfg), VideoCodec(cfg), embodiments={"sawyer-metaworld": entry}
    )
    engine = PolicyEngine(load_policy(tmp_path / "p"), version="v")
    try:
        rng = np.random.default_rng(0)
        for count in (1, 4):
            images = rng.integers(0, 255, (count, 2, 32, 32, 3), dtype=np.uint8)
            result = engine.infer(InferRequest("s", "reach", images, np.zeros(39, np.float32)))
            assert result.actions.shape == (8, 4) and np.isfinite(result.actions).all()
    finally:
        engine.close()


def test_a_pretrained_clip_tower_loads_without_touching_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local weights via `local_files_only`; HF_HUB_OFFLINE stays the caller's (children inherit it)."""
    random = ImageEncoder(ImageConditioningConfig.model_validate(TINY_CLIP))
    random.tower.save_pretrained(tmp_path / "clip")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = dict(os.environ)
    loaded = ImageEncoder(
        ImageConditioningConfig.model_validate(TINY_CLIP | {"pretrained": tmp_path / "clip"})
    )
    assert dict(os.environ) == before
    canvas = torch.zeros(1, 3, 32, 32)
    assert torch.equal(loaded.encode(canvas), random.encode(canvas))
