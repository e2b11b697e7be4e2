"""Noise levels, solver and context: the closed-loop action error of a WAM overfit on real episodes.

Records a few scripted-expert Meta-World episodes, overfits the `tiny` WAM on their training
windows twice with identical settings except the training noise levels: DreamZero's (uniform
before the shift, bell-weighted loss: `train_sigmas="uniform"`) and the earlier logit-normal
draw. Each model then predicts every chunk of every window through the KV-cached sampler with
the real history (teacher forcing, as a robot's observed frames would give it), and the mean
absolute error of the normalised actions is reported for Euler and UniPC at 4 and 16 steps,
and for DreamZero's 16-step UniPC with the DiT on 8 of them.

Context: the same model also drives one 8-chunk session per long episode, once with the cache
reset at the trained context (4 chunks, what serving does now) and once carried on to 8 chunks
(what an 8-chunk cache did before), and the error of chunks 5-8 is compared with chunks 1-4.

    python benchmarks/sampling.py [--episodes 2] [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.sim.expert import record_expert_episode
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.model.config import WAMConfig
from wamfleet.model.normalize import QuantileNormalizer
from wamfleet.model.objective import WAMBatch
from wamfleet.model.sampler import ChunkSampler
from wamfleet.model.text import TextEncoder
from wamfleet.model.trainer import Trainer, TrainerConfig
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.pipelines.windows import WindowSample, collate, episode_windows

EMBODIMENT = "sawyer-metaworld"
SOLVERS = [
    ("euler", 4, None),
    ("euler", 16, None),
    ("unipc", 4, None),
    ("unipc", 16, None),
    ("unipc", 16, [0, 1, 2, 6, 10, 13, 14, 15]),  # DreamZero's step mask
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def record(root: Path, episodes: int, steps: int) -> list[EpisodeReader]:
    readers = []
    for task in ("reach-v3", "push-v3"):
        robot = MetaWorldRobot(task, image_size=32)
        try:
            for seed in range(episodes):
                directory = root / f"{task}-{seed}"
                record_expert_episode(  # the full length, success or not: windows up to 8 chunks
                    robot,
                    directory,
                    robot_id="sim-1",
                    seed=seed,
                    max_steps=steps,
                    noise=0.0,
                    frames_after_success=steps,
                )
                readers.append(EpisodeReader(directory))
        finally:
            robot.close()
    return readers


def train(cfg: WAMConfig, batch: WAMBatch, steps: int, seed: int) -> WorldActionModel:
    torch.manual_seed(seed)
    model = WorldActionModel(cfg)
    trainer = Trainer(model, TrainerConfig(lr=3e-3, warmup_steps=20, seed=seed))
    for _ in range(steps):
        trainer.step([batch])
    return model.eval()


def chunk_errors(model: WorldActionModel, windows: list[WindowSample], batch: WAMBatch) -> list[list[float]]:
    """Per window, the mean |error| of each chunk's normalised actions (real dims only)."""
    sampler = ChunkSampler(model)
    fc = model.config.latent_frames_per_chunk
    out = []
    for i, w in enumerate(windows):
        session = sampler.start(w.cond[None], batch.text[i : i + 1], batch.text_mask[i : i + 1])
        errors = []
        for c in range(w.actions.shape[0]):
            g = torch.Generator().manual_seed(1000 * i + c)
            pred = sampler.predict(
                session,
                w.states[c][None],
                batch.state_mask[i : i + 1],
                batch.action_mask[i : i + 1],
                [EMBODIMENT],
                g,
            )
            dims = w.action_dim
            errors.append(float((pred.actions[0, :, :dims] - w.actions[c, :, :dims]).abs().mean()))
            if c < w.actions.shape[0] - 1:
                sampler.observe(session, w.video[None, :, c * fc : (c + 1) * fc])
        out.append(errors)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=2, help="per task (reach-v3, push-v3), 80 steps each")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wamfleet-sampling-") as tmp:
        readers = record(Path(tmp), args.episodes, steps=80)
        base = WAMConfig.preset_named(
            "tiny", embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}]
        )
        torch.manual_seed(args.seed)
        codec = VideoCodec(base).eval()
        text = TextEncoder(base.text)
        state_norm = QuantileNormalizer.fit(np.concatenate([r.states() for r in readers]))
        action_norm = QuantileNormalizer.fit(
            np.concatenate([a for r in readers if (a := r.actions()) is not None])
        )
        windows = [
            w for r in readers for w in episode_windows(r, codec, base, EMBODIMENT, state_norm, action_norm)
        ]
        batch = collate(windows, text, base)
        # Per episode, its 4-chunk windows (one per chunk start) and its 8-chunk windows.
        long_cfg = base.model_copy(update={"context_chunks": 8})
        by_episode = [
            (
                episode_windows(r, codec, base, EMBODIMENT, state_norm, action_norm),
                episode_windows(r, codec, long_cfg, EMBODIMENT, state_norm, action_norm),
            )
            for r in readers
        ]
        long_windows = sum(len(longs) for _, longs in by_episode)
        log(f"{len(readers)} episodes, {len(windows)} training windows, {long_windows} 8-chunk windows")
        print(f"tiny WAM overfit on {len(windows)} windows of {len(readers)} expert episodes of 80 steps,")
        print(f"{args.steps} training steps per model, seed {args.seed}")
        print("mean |action error| (normalised, real dims), per training noise schedule and sampler:")
        print(f"{'sampler':<28}{'uniform+bell (DreamZero)':>26}{'logit-normal (before)':>24}")
        results: dict[str, dict[str, float]] = {}
        models = {}
        for schedule, weighting in (("uniform", "bell"), ("logit_normal", "none")):
            cfg = base.model_copy(update={"train_sigmas": schedule, "loss_weighting": weighting})
            log(f"training with {schedule} noise levels ...")
            models[schedule] = train(cfg, batch, args.steps, args.seed)
            for solver, steps, mask in SOLVERS:
                name = f"{solver} {steps} steps" + (" (DiT on 8)" if mask else "")
                model = models[schedule]
                model.config = cfg.model_copy(
                    update={"solver": solver, "inference_steps": steps, "dit_steps": mask}
                )
                errors = chunk_errors(model, windows, batch)
                results.setdefault(name, {})[schedule] = statistics.mean(e for row in errors for e in row)
        for name, row in results.items():
            print(f"{name:<28}{row['uniform']:>26.4f}{row['logit_normal']:>24.4f}")

        print("\ncontext: 8 chunks of one episode, chunks 5-8 against 1-4 (uniform model, euler 4 steps)")
        model = models["uniform"]
        trained = base.model_copy(update={"train_sigmas": "uniform", "solver": "euler", "inference_steps": 4})
        for label, reset in (
            ("reset at the trained context (now)", True),
            ("one cache for 8 chunks (before)", False),
        ):
            per_chunk: list[list[float]] = [[] for _ in range(8)]
            for shorts, longs in by_episode:
                for j, whole in enumerate(longs):
                    if reset:  # chunks 1-4 from the window at j, 5-8 from a fresh one at j + 4 chunks
                        model.config = trained
                        parts = [(0, shorts[j]), (4, shorts[j + 4])]
                    else:  # the 8-chunk history serving kept before (positions the model never saw)
                        model.config = trained.model_copy(update={"context_chunks": 8, "max_cache_chunks": 8})
                        parts = [(0, whole)]
                    for offset, w in parts:
                        errs = chunk_errors(model, [w], collate([w], text, base if reset else long_cfg))[0]
                        for c, e in enumerate(errs):
                            per_chunk[offset + c].append(e)
            early = statistics.mean(e for c in range(4) for e in per_chunk[c])
            late = statistics.mean(e for c in range(4, 8) for e in per_chunk[c])
            values = " ".join(f"{statistics.mean(v):.3f}" for v in per_chunk)
            print(f"  {label:<36} per chunk {values}  ->  chunks 5-8 / 1-4 = {late / early:.2f}x")
        print(f"\n({long_windows} 8-chunk sessions; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
