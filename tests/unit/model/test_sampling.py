"""Sampling and training details that change the actions: kernels, dtypes, solver, noise levels."""

from __future__ import annotations

import pytest
import torch

from tests.unit.model.wam_support import masks, synthetic_batch, tiny_model
from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import flow_matching_loss, loss_weights, sample_sigmas, window_velocity
from wamfleet.model.sampler import ChunkSampler, UniPCSolver, inference_sigmas
from wamfleet.model.transformer import WorldActionModel

torch.set_num_threads(1)


def rollout(model: WorldActionModel, chunks: int = 3, cfg_scale_null: bool = True) -> torch.Tensor:
    """Actions of `chunks` cached chunks of one session (observing the synthetic video)."""
    cfg = model.config
    b = synthetic_batch(cfg, batch=1, chunks=chunks)
    am, sm = masks(cfg, "sawyer", 1)
    sampler = ChunkSampler(model)
    null = torch.zeros_like(b.text) if cfg_scale_null else None
    session = sampler.start(b.cond, b.text, b.text_mask, null, b.text_mask)
    fc = cfg.latent_frames_per_chunk
    out = []
    for c in range(chunks):
        pred = sampler.predict(session, b.states[:, c], sm, am, ["sawyer"], torch.Generator().manual_seed(c))
        out.append(pred.actions[..., :4])
        if c < chunks - 1:
            sampler.observe(session, b.video[:, :, c * fc : (c + 1) * fc])
    return torch.stack(out)


def test_block_kernel_equals_the_dense_mask_in_training_and_sampling() -> None:
    dense, blocks = tiny_model(attention="dense"), tiny_model(attention="blocks")
    batch = synthetic_batch(dense.config, batch=2, chunks=4)
    g = torch.Generator().manual_seed(0)
    nv, na = torch.randn(batch.video.shape, generator=g), torch.randn(batch.actions.shape, generator=g)
    sigmas = torch.rand(2, 4, generator=g)
    with torch.no_grad():
        vd, ad = window_velocity(dense, batch, nv, na, sigmas)
        vb, ab = window_velocity(blocks, batch, nv, na, sigmas)
    torch.testing.assert_close(vb, vd, rtol=0, atol=1e-5)
    torch.testing.assert_close(ab, ad, rtol=0, atol=1e-5)
    torch.testing.assert_close(rollout(blocks), rollout(dense), rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        model.gradient_checkpointing = checkpointing
        batch = synthetic_batch(model.config, batch=2, chunks=2)
        flow_matching_loss(model, batch, torch.Generator().manual_seed(0)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_half_precision_sampling_runs_and_stays_close_to_fp32(dtype: torch.dtype, cfg_scale: float) -> None:
    """A model cast to bf16/fp16 samples (noise and solver stay fp32); drift measured on CPU:
    bf16 max 0.008, fp16 max 0.001 on actions of magnitude ~1."""
    reference = rollout(tiny_model(cfg_scale=cfg_scale))
    low = rollout(tiny_model(cfg_scale=cfg_scale).to(dtype))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - reference).abs().max() < (0.03 if dtype == torch.bfloat16 else 0.005)


def test_half_precision_batches_sessions_too() -> None:
    model = tiny_model().to(torch.bfloat16)
    cfg = model.config
    sampler = ChunkSampler(model)
    am, sm = masks(cfg, "sawyer", 1)
    b = synthetic_batch(cfg, batch=1, chunks=2)
    sessions = [sampler.start(b.cond, b.text, b.text_mask) for _ in range(2)]
    sampler.observe(sessions[1], b.video[:, :, :2])
    pred = sampler.predict_batch(
        sessions,
        b.states[:, :1].expand(2, 1, -1)[:, 0],
        sm.expand(2, -1),
        am.expand(2, -1),
        ["sawyer"] * 2,
        [None, None],
    )
    assert pred.actions.dtype == torch.float32 and torch.isfinite(pred.actions).all()


def test_batched_sessions_attend_to_their_own_cache_buffers_in_place() -> None:
    model = tiny_model()
    cfg = model.config
    sampler = ChunkSampler(model)
    am, sm = masks(cfg, "sawyer", 1)
    b = synthetic_batch(cfg, batch=1, chunks=2)
    sessions = [sampler.start(b.cond, b.text, b.text_mask) for _ in range(3)]
    sampler.observe(sessions[2], b.video[:, :, :2])
    pointers = [[t.data_ptr() for t in s.cache.keys + s.cache.values] for s in sessions]
    lengths = [s.cache.length for s in sessions]
    for _ in range(2):
        sampler.predict_batch(
            sessions,
            torch.zeros(3, cfg.max_state_dim),
            sm.expand(3, -1),
            am.expand(3, -1),
            ["sawyer"] * 3,
            [None] * 3,
        )
    assert [[t.data_ptr() for t in s.cache.keys + s.cache.values] for s in sessions] == pointers
    assert [s.cache.length for s in sessions] == lengths  # predictions are never committed as history


def test_unipc_walks_the_documented_grid_and_dreamzero_step_mask() -> None:
    cfg = WAMConfig.preset_named("small")
    sigmas = inference_sigmas(cfg.inference_steps, cfg.flow_shift)
    solver = UniPCSolver(cfg.inference_steps, cfg.flow_shift)
    torch.testing.assert_close(solver.scheduler.sigmas.float(), sigmas, rtol=0, atol=1e-5)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    dit = [round(float(sigmas[i]), 3) for i, run in enumerate(cfg.dit_step_mask) if run]
    # DreamZero's 16-step mask: the DiT still runs on the last steps (down to ~0.25).
    assert dit == pytest.approx([1.0, 0.987, 0.972, 0.893, 0.75, 0.537, 0.419, 0.253], abs=0.004)


def test_the_dit_runs_only_on_the_masked_steps() -> None:
    model = tiny_model(inference_steps=8, dit_steps=[0, 1, 5, 7])
    b = synthetic_batch(model.config, batch=1, chunks=1)
    am, sm = masks(model.config, "sawyer", 1)
    sampler = ChunkSampler(model)
    pred = sampler.predict(sampler.start(b.cond, b.text, b.text_mask), b.states[:, 0], sm, am, ["sawyer"])
    assert pred.dit_calls == 4


def test_legacy_stride_configs_still_load_as_a_step_mask() -> None:
    cfg = WAMConfig.model_validate(WAMConfig.preset_named("tiny").model_dump() | {"dit_step_stride": 2})
    assert cfg.dit_steps == [0, 2]


def test_training_draws_noise_levels_like_dreamzero() -> None:
    """Uniform before the shift: ~6% of draws below sigma 0.25 (where the last sampling steps are);
    the old logit-normal draw put only ~0.35% there."""
    g = torch.Generator().manual_seed(0)
    uniform = sample_sigmas(200, 500, WAMConfig.preset_named("tiny"), g)
    logit = sample_sigmas(200, 500, WAMConfig.preset_named("tiny", train_sigmas="logit_normal"), g)
    assert 0.055 < float((uniform < 0.25).float().mean()) < 0.07
    assert float((logit < 0.25).float().mean()) < 0.01
    weights = loss_weights(uniform, WAMConfig.preset_named("tiny"))
    assert float(weights.mean()) == pytest.approx(1.0, abs=0.02)
    assert float(loss_weights(torch.tensor([1.0]), WAMConfig.preset_named("tiny"))) == pytest.approx(
        0.0, abs=1e-6
    )
    flat = loss_weights(uniform, WAMConfig.preset_named("tiny", loss_weighting="none"))
    assert torch.equal(flat, torch.ones_like(uniform))
