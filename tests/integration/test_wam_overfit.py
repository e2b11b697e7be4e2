"""The WAM learns: overfitting two real Meta-World episodes through the whole data path.

Episodes are recorded by the simulated robot, read back from their bundles, encoded by the
video codec chunk by chunk, normalised (q01/q99), embedded (MiniLM) and trained on; then the
KV-cached sampler, driven with the real history, must reproduce the recorded actions, and so
must the serving engine over a whole episode longer than the trained context.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.sim.expert import record_expert_episode
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.model.config import WAMConfig
from wamfleet.model.normalize import QuantileNormalizer
from wamfleet.model.objective import flow_matching_loss
from wamfleet.model.policy import load_policy, save_policy
from wamfleet.model.sampler import ChunkSampler
from wamfleet.model.text import TextEncoder
from wamfleet.model.trainer import Trainer, TrainerConfig
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.pipelines.windows import collate, episode_windows
from wamfleet.serving.engine import InferRequest, PolicyEngine

# trains the WAM to overfit real episodes: most of a minute; `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

torch.set_num_threads(1)
EMBODIMENT = "sawyer-metaworld"


def test_overfits_a_small_meta_world_episode_set(tmp_path: Path) -> None:
    robot = MetaWorldRobot("reach-v3", image_size=32)
    try:
        dirs = []
        for seed in range(2):
            record_expert_episode(  # 72 steps whatever happens: 8 chunks, twice the trained context
                robot,
                tmp_path / f"e{seed}",
                robot_id="sim-1",
                seed=seed,
                max_steps=72,
                noise=0.0,
                frames_after_success=72,
            )
            dirs.append(tmp_path / f"e{seed}")
    finally:
        robot.close()
    cfg = WAMConfig.preset_named("tiny", embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}])
    torch.manual_seed(0)
    codec = VideoCodec(cfg).eval()
    text = TextEncoder(cfg.text)
    readers = [EpisodeReader(d) for d in dirs]
    state_norm = QuantileNormalizer.fit(np.concatenate([r.states() for r in readers]))
    action_norm = QuantileNormalizer.fit(np.concatenate([r.actions() for r in readers]))
    samples = [
        w for r in readers for w in episode_windows(r, codec, cfg, EMBODIMENT, state_norm, action_norm)
    ]
    assert len(samples) >= 4
    batch = collate(samples, text, cfg)
    model = WorldActionModel(cfg)

    def held_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(flow_matching_loss(model, batch, torch.Generator().manual_seed(123)).loss)

    before = held_loss()
    trainer = Trainer(model, TrainerConfig(lr=3e-3, warmup_steps=20))
    for _ in range(150):
        trainer.step([batch])
    after = held_loss()
    assert before / after >= 10, (before, after)

    # Closed loop on a training window: the cached sampler reproduces the recorded actions.
    model.eval()
    sampler = ChunkSampler(model)
    window = samples[0]
    session = sampler.start(window.cond[None], batch.text[:1], batch.text_mask[:1])
    fc = cfg.latent_frames_per_chunk
    errors = []
    for c in range(cfg.context_chunks):
        g = torch.Generator().manual_seed(c)
        pred = sampler.predict(
            session, window.states[c][None], batch.state_mask[:1], batch.action_mask[:1], [EMBODIMENT], g
        )
        errors.append(float((pred.actions[0, :, :4] - window.actions[c, :, :4]).abs().mean()))
        sampler.observe(session, window.video[None, :, c * fc : (c + 1) * fc])
    baseline = float(window.actions[:, :, :4].abs().mean())  # predicting zeros
    assert max(errors) < 0.15, errors
    assert np.mean(errors) < baseline / 3, (errors, baseline)
    # Denormalised, the actions are back in the robot's units and bounds.
    recorded = readers[0].actions()
    assert recorded is not None
    denorm = action_norm.denormalize(pred.actions[0, :, :4].numpy())
    assert np.all(np.abs(denorm) <= 1.5)

    # Served over a whole episode of 8 chunks, twice the trained context of 4: the engine's
    # cache restarts from the real frame at chunk 5 instead of holding history the model never
    # saw (an 8-chunk cache made chunks 5-8 ~19x worse than 1-4), so the error does not jump.
    entry = {
        "spec": sawyer_embodiment(32).model_dump(mode="json"),
        "state_norm": state_norm.to_dict(),
        "action_norm": action_norm.to_dict(),
    }
    save_policy(tmp_path / "policy", model, codec, embodiments={EMBODIMENT: entry})
    engine = PolicyEngine(load_policy(tmp_path / "policy"), version="overfit", max_batch=1)
    reader = readers[0]
    video = reader.frames(0, reader.num_frames, cfg.cameras)
    frames = np.stack([video[c] for c in cfg.cameras], axis=1)  # (T, V, H, W, 3)
    a, stride, n = cfg.actions_per_chunk, cfg.action_stride, cfg.video_frames_per_chunk
    span = (action_norm.q99 - action_norm.q01) / 2
    scale = np.where(span > 0, span, 1.0)  # the constant gripper dimension comes back exact
    served = []
    try:
        for chunk in range(8):
            step = chunk * a
            seen = frames[[step - stride * i for i in reversed(range(n))]] if chunk else frames[[0]]
            reply = engine.infer(
                InferRequest(
                    "episode", reader.manifest.task, seen, reader.states()[step], frame_index=step // stride
                )
            )
            served.append(float((np.abs(reply.actions - recorded[step : step + a]) / scale).mean()))
    finally:
        engine.close()
    early, late = float(np.mean(served[:4])), float(np.mean(served[4:]))
    assert late < 2.5 * early + 0.02, served
