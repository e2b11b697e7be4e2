"""World Action Model speed: training samples/s, and per-chunk latency against chunk index
with and without the KV cache (target: at least 4x faster at chunk 8 with the cache).

Runs the `tiny` preset on CPU (one thread, like CI); with `--device cuda --preset small` it
measures the GPU case in bf16 and adds peak memory and model FLOPs utilisation.

    python benchmarks/model.py [--preset tiny] [--device cpu] [--chunks 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch
from wamfleet.model.sampler import ChunkSampler
from wamfleet.model.trainer import Trainer, TrainerConfig
from wamfleet.model.transformer import WorldActionModel

EMBODIMENT = {"name": "sawyer", "state_dim": 39, "action_dim": 4}
TARGET_SPEEDUP = 4.0


def batch_for(cfg: WAMConfig, batch: int, chunks: int, device: torch.device) -> WAMBatch:
    c, (h, w), fc = cfg.vae.z_dim, cfg.latent_hw, cfg.latent_frames_per_chunk
    am = torch.zeros(batch, cfg.max_action_dim)
    am[:, :4] = 1
    sm = torch.zeros(batch, cfg.max_state_dim)
    sm[:, :39] = 1
    return WAMBatch(
        cond=torch.randn(batch, c, 1, h, w),
        video=torch.randn(batch, c, chunks * fc, h, w),
        actions=torch.randn(batch, chunks, cfg.actions_per_chunk, cfg.max_action_dim) * am[:, None, None],
        action_mask=am,
        has_actions=torch.ones(batch, dtype=torch.bool),
        states=torch.randn(batch, chunks, cfg.max_state_dim) * sm[:, None],
        state_mask=sm,
        text=torch.randn(batch, 16, cfg.text.dim),
        text_mask=torch.ones(batch, 16),
        embodiments=["sawyer"] * batch,
    ).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(cfg: WAMConfig, device: torch.device, batch: int, steps: int) -> float:
    model = WorldActionModel(cfg)
    trainer = Trainer(model, TrainerConfig(lr=1e-4), device=str(device))
    data = batch_for(cfg, batch, cfg.context_chunks, device)
    trainer.step([data])  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step([data])
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def chunk_latencies(cfg: WAMConfig, device: torch.device, chunks: int, use_cache: bool) -> list[float]:
    torch.manual_seed(0)
    model = WorldActionModel(cfg).to(device).eval()
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    dtype = next(model.parameters()).dtype
    data = batch_for(cfg, 1, chunks, device)
    sampler = ChunkSampler(model, use_cache=use_cache)
    null = torch.zeros_like(data.text).to(dtype) if cfg.cfg_scale != 1.0 else None
    session = sampler.start(data.cond.to(dtype), data.text.to(dtype), data.text_mask, null, data.text_mask)
    fc = cfg.latent_frames_per_chunk
    times = []
    for c in range(chunks):
        sync(device)
        start = time.perf_counter()
        sampler.predict(session, data.states[:, c].to(dtype), data.state_mask, data.action_mask, ["sawyer"])
        sync(device)
        times.append(time.perf_counter() - start)
        sampler.observe(session, data.video[:, :, c * fc : (c + 1) * fc].to(dtype))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    cfg = WAMConfig.preset_named(args.preset, embodiments=[EMBODIMENT], max_cache_chunks=max(args.chunks, 8))
    params = WorldActionModel(cfg).num_parameters()
    threads = torch.get_num_threads()
    print(f"WAM {args.preset}: {params / 1e6:.2f}M parameters on {device} ({threads} CPU threads)")
    print(
        f"chunk: {cfg.latent_frames_per_chunk} latent frames x {cfg.tokens_per_latent_frame} tokens + "
        f"{cfg.actions_per_chunk} actions + 1 state; "
        f"{cfg.inference_steps} steps, DiT every {cfg.dit_step_stride}"
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = train_rate(cfg, device, args.train_batch, args.train_steps)
    print(
        f"train: {rate:.1f} samples/s (windows of 1 + {cfg.context_chunks} chunks, batch {args.train_batch})"
    )

    runs = {
        mode: [chunk_latencies(cfg, device, args.chunks, mode) for _ in range(args.repeats)]
        for mode in (True, False)
    }
    cached = [statistics.median(r[i] for r in runs[True]) for i in range(args.chunks)]
    full = [statistics.median(r[i] for r in runs[False]) for i in range(args.chunks)]
    print("chunk  with cache   without cache   speedup")
    for i in range(args.chunks):
        print(
            f"{i + 1:5d}  {cached[i] * 1000:9.1f} ms  {full[i] * 1000:11.1f} ms  {full[i] / cached[i]:7.2f}x"
        )
    last = full[-1] / cached[-1]
    verdict = "met" if last >= TARGET_SPEEDUP else "MISSED"
    print(
        f"speedup at chunk {args.chunks}: {last:.2f}x (target >= {TARGET_SPEEDUP:.0f}x at chunk 8: {verdict})"
    )
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
