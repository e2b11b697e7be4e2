"""The WAM's structure: block causality, KV-cached sampling, shared chunk timesteps, config errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tests.unit.model.wam_support import masks, synthetic_batch, tiny_config, tiny_model
from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch, check_batch, flow_matching_loss, window_velocity
from wamfleet.model.sampler import ChunkSampler, inference_sigmas
from wamfleet.model.transformer import Kind, TokenMeta, WorldActionModel, attention_mask

torch.set_num_threads(1)


def velocities(
    model: WorldActionModel,
    batch: WAMBatch,
    noisy_video: torch.Tensor,
    noisy_actions: torch.Tensor,
    sigmas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return window_velocity(model, batch, noisy_video, noisy_actions, sigmas)


def test_perturbing_a_later_chunk_leaves_earlier_chunks_bit_identical() -> None:
    model = tiny_model()
    cfg = model.config
    batch = synthetic_batch(cfg, batch=1, chunks=4)
    fc = cfg.latent_frames_per_chunk
    g = torch.Generator().manual_seed(1)
    noisy_video = torch.randn(batch.video.shape, generator=g)
    noisy_actions = torch.randn(batch.actions.shape, generator=g)
    sigmas = torch.tensor([[0.9, 0.5, 0.7, 0.3]])
    video_v, action_v = velocities(model, batch, noisy_video, noisy_actions, sigmas)
    k = 2  # change everything about chunk k+1 = 3 (index 2): clean and noisy video, actions, state, sigma
    changed = synthetic_batch(cfg, batch=1, chunks=4)
    changed.video[:, :, k * fc :] += 5.0
    changed.states[:, k:] += 3.0
    nv, na = noisy_video.clone(), noisy_actions.clone()
    nv[:, :, k * fc :] = torch.randn(nv[:, :, k * fc :].shape)
    na[:, k:] = torch.randn(na[:, k:].shape)
    s2 = sigmas.clone()
    s2[:, k:] = 0.1
    video_v2, action_v2 = velocities(model, changed, nv, na, s2)
    assert torch.equal(video_v[:, :, : k * fc], video_v2[:, :, : k * fc])
    assert torch.equal(action_v[:, :k], action_v2[:, :k])
    assert not torch.allclose(video_v[:, :, k * fc :], video_v2[:, :, k * fc :])


def test_mask_rules() -> None:
    # cond, clean 1, clean 2, noisy 1, noisy 2, state 1, state 2
    kinds = [Kind.COND, Kind.CLEAN, Kind.CLEAN, Kind.NOISY, Kind.NOISY, Kind.STATE, Kind.STATE]
    chunks = [0, 1, 2, 1, 2, 1, 2]
    meta = TokenMeta(torch.tensor(kinds), torch.tensor(chunks), torch.zeros(7, 3, dtype=torch.long))
    m = attention_mask(meta, meta).int().tolist()
    assert m[0] == [1, 0, 0, 0, 0, 0, 0]  # cond sees itself
    assert m[2] == [1, 1, 1, 0, 0, 0, 0]  # clean 2 sees cond, clean <= 2
    assert m[3] == [1, 0, 0, 1, 0, 1, 0]  # noisy 1 sees cond, its own noisy tokens and state
    assert m[4] == [1, 1, 0, 0, 1, 0, 1]  # noisy 2 sees clean 1, not clean 2 (its own future)
    assert m[6] == [0, 0, 0, 0, 0, 0, 1]  # state sees only itself


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_kv_cached_sampling_equals_full_recomputation(cfg_scale: float) -> None:
    model = tiny_model(cfg_scale=cfg_scale)
    cfg = model.config
    batch = synthetic_batch(cfg, batch=2, chunks=3)
    null = torch.zeros_like(batch.text)
    action_mask, state_mask = masks(cfg, "sawyer", 2)
    results = []
    for use_cache in (True, False):
        sampler = ChunkSampler(model, use_cache=use_cache)
        session = sampler.start(batch.cond, batch.text, batch.text_mask, null, batch.text_mask)
        outs = []
        for c in range(3):
            g = torch.Generator().manual_seed(c)
            pred = sampler.predict(session, batch.states[:, c], state_mask, action_mask, batch.embodiments, g)
            outs.append((pred.actions, pred.video))
            fc = cfg.latent_frames_per_chunk
            sampler.observe(session, batch.video[:, :, c * fc : (c + 1) * fc])
        results.append(outs)
    for (a1, v1), (a2, v2) in zip(*results, strict=True):
        assert (a1 - a2).abs().max() <= 1e-4
        assert (v1 - v2).abs().max() <= 1e-4


def test_cached_chunk_velocity_matches_the_training_sequence() -> None:
    """The same chunk denoised through the cache or inside a teacher-forced window agrees."""
    model = tiny_model()
    cfg = model.config
    batch = synthetic_batch(cfg, batch=1, chunks=3)
    fc = cfg.latent_frames_per_chunk
    g = torch.Generator().manual_seed(3)
    noisy_video = torch.randn(batch.video.shape, generator=g)
    noisy_actions = torch.randn(batch.actions.shape, generator=g)
    sigmas = torch.full((1, 3), 0.6)
    video_v, action_v = velocities(model, batch, noisy_video, noisy_actions, sigmas)

    from wamfleet.model import sequence
    from wamfleet.model.transformer import KVCache

    cache = KVCache(sequence.history_capacity(cfg))
    cross = model.cross_context(batch.text, batch.text_mask)
    with torch.no_grad():
        tok, meta = sequence.cond_tokens(model, batch.cond, None)
        model.run(tok, torch.zeros(1, tok.shape[1]), meta, cross, cache, write_cache=True)
        tok, meta = sequence.clean_tokens(model, batch.video[:, :, : 2 * fc], 1, None)
        model.run(tok, torch.zeros(1, tok.shape[1]), meta, cross, cache, write_cache=True)
        query = sequence.query_tokens(
            model,
            noisy_video[:, :, 2 * fc :],
            noisy_actions[:, 2],
            sequence.state_token(model, batch.states[:, 2], batch.state_mask, batch.embodiments),
            batch.action_mask,
            batch.embodiments,
            None,
        )
        t = sequence.query_timesteps(torch.tensor([0.6]), query.shape[1])
        hidden = model.run(query, t, sequence.query_meta(cfg, 3), cross, cache)
    cached_video, cached_actions = sequence.split_query(model, hidden, batch.embodiments)
    assert (cached_video - video_v[:, :, 2 * fc :]).abs().max() <= 1e-4
    assert (cached_actions - action_v[:, 2]).abs().max() <= 1e-4


def test_one_timestep_per_chunk_is_shared_by_video_and_actions() -> None:
    """Changing chunk 2's sigma moves both its video and action outputs, and nothing of chunk 1."""
    model = tiny_model()
    cfg = model.config
    batch = synthetic_batch(cfg, batch=1, chunks=2)
    fc = cfg.latent_frames_per_chunk
    nv, na = torch.randn(batch.video.shape), torch.randn(batch.actions.shape)
    v1, a1 = velocities(model, batch, nv, na, torch.tensor([[0.5, 0.5]]))
    v2, a2 = velocities(model, batch, nv, na, torch.tensor([[0.5, 0.9]]))
    assert torch.equal(v1[:, :, :fc], v2[:, :, :fc]) and torch.equal(a1[:, 0], a2[:, 0])
    assert not torch.allclose(v1[:, :, fc:], v2[:, :, fc:]) and not torch.allclose(a1[:, 1], a2[:, 1])


def test_video_only_batch_gives_video_loss_and_no_gradient_to_action_decoder() -> None:
    model = tiny_model().train()
    batch = synthetic_batch(model.config, batch=2, chunks=2)
    batch.has_actions[:] = False
    out = flow_matching_loss(model, batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.video_loss > 0
    assert out.action_loss == 0
    for p in model.action_decoders.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert any(p.grad is not None and torch.count_nonzero(p.grad) for p in model.blocks.parameters())


def test_mixed_embodiments_use_their_own_heads() -> None:
    model = tiny_model()
    cfg = model.config
    batch = synthetic_batch(cfg, batch=2, chunks=1)
    am, sm = masks(cfg, "arm6", 1)
    batch.action_mask[1], batch.state_mask[1] = am[0], sm[0]
    batch.embodiments = ["sawyer", "arm6"]
    out = flow_matching_loss(model.train(), batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    for name in ("sawyer", "arm6"):
        assert any(p.grad is not None for p in model.action_decoders[name].parameters())


def test_sigmas_end_exactly_at_zero_and_decrease() -> None:
    sigmas = inference_sigmas(8, 5.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == 9
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_sampler_resets_after_the_context_limit() -> None:
    model = tiny_model(max_cache_chunks=2)
    cfg = model.config
    batch = synthetic_batch(cfg, batch=1, chunks=2)
    am, sm = masks(cfg, "sawyer", 1)
    sampler = ChunkSampler(model)
    session = sampler.start(batch.cond, batch.text, batch.text_mask)
    fc = cfg.latent_frames_per_chunk
    for c in range(2):
        sampler.predict(session, batch.states[:, c], sm, am, ["sawyer"])
        sampler.observe(session, batch.video[:, :, c * fc : (c + 1) * fc])
    assert sampler.needs_reset(session)
    with pytest.raises(RuntimeError, match="start a new session"):
        sampler.predict(session, batch.states[:, 0], sm, am, ["sawyer"])
    with pytest.raises(ValueError, match="latents: expected shape"):
        sampler.observe(sampler.start(batch.cond, batch.text), batch.video)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dim": 66}, "dim"),
        ({"video_frames_per_chunk": 6}, "video_frames_per_chunk"),
        ({"actions_per_chunk": 6}, "actions_per_chunk"),
        ({"view_size": (30, 32)}, "view_size"),
        ({"cameras": ["a", "b", "c"], "canvas_grid": (1, 2)}, "canvas_grid"),
        ({"max_cache_chunks": 5}, "max_cache_chunks"),
        ({"dit_steps": [1, 2]}, "dit_steps"),
        ({"embodiments": [{"name": "x", "state_dim": 99, "action_dim": 1}]}, "embodiments"),
        ({"inference_steps": 0}, "inference_steps"),
    ],
)
def test_bad_configs_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        WAMConfig.preset_named("tiny", **overrides)
    with pytest.raises(ValueError, match="preset: unknown"):
        WAMConfig.preset_named("huge")


def test_mismatched_batch_shapes_name_the_field() -> None:
    model = tiny_model()
    batch = synthetic_batch(model.config)
    batch.actions = batch.actions[:, :, :5]
    with pytest.raises(ValueError, match=r"batch\.actions: expected shape"):
        check_batch(model, batch)
    batch = synthetic_batch(model.config)
    batch.embodiments = ["sawyer", "unknown-robot"]
    with pytest.raises(KeyError, match="unknown-robot"):
        check_batch(model, batch)


def test_new_embodiment_heads_can_be_added() -> None:
    model = tiny_model()
    model.add_embodiment("gripper-bot", state_dim=3, action_dim=2)
    assert "gripper-bot" in model.action_decoders
    assert tiny_config().embodiments != model.config.embodiments


def test_preset_overrides_merge_nested_sections() -> None:
    cfg = WAMConfig.preset_named(
        "wan2.1-14b", vae={"pretrained": "/weights/vae"}, text={"pretrained": "/weights/t5"}
    )
    assert cfg.vae.z_dim == 16 and str(cfg.vae.pretrained) == "/weights/vae"
    assert cfg.text.kind == "umt5" and cfg.text.dim == 4096
    assert cfg.tokens_per_latent_frame == 22 * 40 // 2  # two cameras side by side: 176 x 640
    droid = WAMConfig.preset_named("wan2.1-14b", cameras=["exterior_1", "exterior_2", "wrist"])
    assert droid.grid == (2, 2) and droid.tokens_per_latent_frame == 880  # DreamZero's 352 x 640


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_batched_sessions_at_different_chunks_match_their_own_predictions(cfg_scale: float) -> None:
    model = tiny_model(cfg_scale=cfg_scale)
    cfg = model.config
    fc = cfg.latent_frames_per_chunk
    sampler = ChunkSampler(model)
    am, sm = masks(cfg, "sawyer", 1)
    sessions, states = [], []
    for i, history in enumerate((0, 2, 1)):  # three robots, each at its own chunk
        batch = synthetic_batch(cfg, batch=1, chunks=3, seed=i)
        null = torch.zeros_like(batch.text)
        session = sampler.start(batch.cond, batch.text, batch.text_mask, null, batch.text_mask)
        for c in range(history):
            sampler.observe(session, batch.video[:, :, c * fc : (c + 1) * fc])
        sessions.append(session)
        states.append(batch.states[:, history])
    alone = [
        sampler.predict(s, st, sm, am, ["sawyer"], torch.Generator().manual_seed(i))
        for i, (s, st) in enumerate(zip(sessions, states, strict=True))
    ]
    together = sampler.predict_batch(
        sessions,
        torch.cat(states),
        sm.expand(3, -1),
        am.expand(3, -1),
        ["sawyer"] * 3,
        [torch.Generator().manual_seed(i) for i in range(3)],
    )
    for i, single in enumerate(alone):
        assert (together.actions[i] - single.actions[0]).abs().max() <= 1e-4
        assert (together.video[i] - single.video[0]).abs().max() <= 1e-4
