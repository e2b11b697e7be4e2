"""World Action Model speed: training samples/s, and per-chunk latency against chunk index
with the KV cache and with history recomputed (target: at least 4x at chunk 8 with the cache).

The cached side counts what serving pays per chunk: `predict` plus `observe`, the forward pass
that writes the executed chunk's frames into the cache. The recomputed side pays `predict`
over the whole history (its `observe` only keeps the latents). Both see the same latents, so
the VAE, which both would run the same way, is left out. The config's context is stretched to
`--chunks` so chunk 8 exists (random weights; the sequence is what matters here).

On a GPU it also prints peak memory, the SDPA kernel chosen, model FLOPs utilisation, and the
drift of `--dtype` against fp32 on the same session; `--wan-shape` repeats the inference
figures at the wan2.1-1.3b shape on random weights (about 5 minutes on one H100-class GPU).

    python benchmarks/model.py                                   # CPU, tiny, fp32, 1 thread
    python benchmarks/model.py --device cuda --dtype bf16 --preset small --wan-shape
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch
from wamfleet.model.sampler import ChunkSampler
from wamfleet.model.sequence import history_capacity, query_length
from wamfleet.model.trainer import Trainer, TrainerConfig
from wamfleet.model.transformer import WorldActionModel, sdpa_backend

EMBODIMENT = {"name": "sawyer", "state_dim": 39, "action_dim": 4}
TARGET_SPEEDUP = 4.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def batch_for(cfg: WAMConfig, batch: int, chunks: int, device: torch.device, seed: int = 0) -> WAMBatch:
    g = torch.Generator().manual_seed(seed)
    c, (h, w), fc = cfg.vae.z_dim, cfg.latent_hw, cfg.latent_frames_per_chunk
    am = torch.zeros(batch, cfg.max_action_dim)
    am[:, :4] = 1
    sm = torch.zeros(batch, cfg.max_state_dim)
    sm[:, :39] = 1
    tokens = min(cfg.text.max_tokens, 16)
    return WAMBatch(
        cond=torch.randn(batch, c, 1, h, w, generator=g),
        video=torch.randn(batch, c, chunks * fc, h, w, generator=g),
        actions=torch.randn(batch, chunks, cfg.actions_per_chunk, cfg.max_action_dim, generator=g)
        * am[:, None, None],
        action_mask=am,
        has_actions=torch.ones(batch, dtype=torch.bool),
        states=torch.randn(batch, chunks, cfg.max_state_dim, generator=g) * sm[:, None],
        state_mask=sm,
        text=torch.randn(batch, tokens, cfg.text.dim, generator=g),
        text_mask=torch.ones(batch, tokens),
        embodiments=["sawyer"] * batch,
    ).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cfg: WAMConfig, device: torch.device, dtype: torch.dtype) -> WorldActionModel:
    torch.manual_seed(0)
    with torch.device(device):
        model = WorldActionModel(cfg)
    return model.to(dtype).eval()


def train_rate(cfg: WAMConfig, device: torch.device, batch: int, steps: int) -> tuple[float, float]:
    """(samples/s, seconds per step) with the trainer's own AMP (bf16 autocast on CUDA)."""
    with torch.device(device):
        model = WorldActionModel(cfg)
    trainer = Trainer(model, TrainerConfig(lr=1e-4), device=str(device))
    data = batch_for(cfg, batch, cfg.context_chunks, device)
    trainer.step([data])  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step([data])
    sync(device)
    per_step = (time.perf_counter() - start) / steps
    return batch / per_step, per_step


@dataclass
class ChunkTimes:
    predict: list[float]
    observe: list[float]
    actions: list[torch.Tensor]

    @property
    def total(self) -> list[float]:
        return [p + o for p, o in zip(self.predict, self.observe, strict=True)]


def run_session(model: WorldActionModel, chunks: int, use_cache: bool) -> ChunkTimes:
    cfg = model.config
    device = model.device
    data = batch_for(cfg, 1, chunks, device)
    sampler = ChunkSampler(model, use_cache=use_cache)
    null = torch.zeros_like(data.text) if cfg.cfg_scale != 1.0 else None
    session = sampler.start(data.cond, data.text, data.text_mask, null, data.text_mask)
    fc = cfg.latent_frames_per_chunk
    times = ChunkTimes([], [], [])
    for c in range(chunks):
        sync(device)
        start = time.perf_counter()
        if c > 0:  # the chunk the robot just executed goes into the history first, as in serving
            sampler.observe(session, data.video[:, :, (c - 1) * fc : c * fc])
        sync(device)
        middle = time.perf_counter()
        pred = sampler.predict(
            session,
            data.states[:, c],
            data.state_mask,
            data.action_mask,
            ["sawyer"],
            torch.Generator().manual_seed(c),
        )
        sync(device)
        times.observe.append(middle - start)
        times.predict.append(time.perf_counter() - middle)
        times.actions.append(pred.actions[..., :4].float().cpu())
    return times


def median_times(runs: list[ChunkTimes]) -> ChunkTimes:
    n = len(runs[0].predict)
    return ChunkTimes(
        [statistics.median(r.predict[i] for r in runs) for i in range(n)],
        [statistics.median(r.observe[i] for r in runs) for i in range(n)],
        runs[0].actions,
    )


def dit_flops(cfg: WAMConfig, params: int, query: int, keys: int) -> float:
    """Forward FLOPs of one DiT call: 2 per weight per token, plus attention's QK^T and AV."""
    return 2.0 * params * query + 4.0 * cfg.num_layers * query * keys * cfg.dim


def latency_table(model: WorldActionModel, chunks: int, repeats: int) -> tuple[ChunkTimes, ChunkTimes]:
    run_session(model, 2, True)  # warm-up (kernels, allocator)
    runs: dict[bool, list[ChunkTimes]] = {True: [], False: []}
    for _ in range(repeats):  # alternating, so both sides see the same load on a shared machine
        for use_cache in (True, False):
            runs[use_cache].append(run_session(model, chunks, use_cache))
    cached, full = median_times(runs[True]), median_times(runs[False])
    print("chunk   observe   predict  cached total   recomputed   speedup")
    for i in range(chunks):
        print(
            f"{i + 1:5d}  {cached.observe[i] * 1000:7.1f}  {cached.predict[i] * 1000:7.1f}"
            f"  {cached.total[i] * 1000:9.1f} ms  {full.total[i] * 1000:8.1f} ms"
            f"  {full.total[i] / cached.total[i]:7.2f}x"
        )
    return cached, full


def report(args: argparse.Namespace, preset: str, dtype: torch.dtype, *, train: bool) -> None:
    device = torch.device(args.device)
    cfg = WAMConfig.preset_named(
        preset,
        embodiments=[EMBODIMENT],
        context_chunks=max(args.chunks, 4),
        max_cache_chunks=args.chunks,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(cfg, device, dtype)
    params = model.num_parameters()
    dit_calls = sum(cfg.dit_step_mask) * (2 if cfg.cfg_scale != 1.0 else 1)
    print(f"\n== WAM {preset}: {params / 1e6:.1f}M parameters, {str(dtype)[6:]} on {device}")
    print(
        f"chunk: {cfg.latent_frames_per_chunk} latent frames x {cfg.tokens_per_latent_frame} tokens + "
        f"{cfg.actions_per_chunk} actions + 1 state = {query_length(cfg)} query tokens; "
        f"{cfg.inference_steps} {cfg.solver} steps, DiT on {sum(cfg.dit_step_mask)}"
        f"{' x2 (CFG)' if cfg.cfg_scale != 1.0 else ''}; attention kernel {cfg.attention}, "
        f"SDPA backend {sdpa_backend(device, dtype, cfg.head_dim)}"
    )
    cached, full = latency_table(model, args.chunks, args.repeats)
    last = full.total[-1] / cached.total[-1]
    verdict = "met" if last >= TARGET_SPEEDUP else "MISSED"
    predict_only = full.predict[-1] / cached.predict[-1]
    print(
        f"speedup at chunk {args.chunks}, observe + predict against recomputation: {last:.2f}x "
        f"(target >= {TARGET_SPEEDUP:.0f}x: {verdict}); predict only: {predict_only:.2f}x"
    )
    if device.type == "cuda":
        keys = history_capacity(cfg)
        flops = dit_calls * dit_flops(cfg, params, query_length(cfg), keys)
        mfu = flops / cached.predict[-1] / (args.peak_tflops * 1e12)
        print(
            f"inference MFU at chunk {args.chunks}: {100 * mfu:.2f}% of {args.peak_tflops:g} TFLOP/s "
            f"(one robot; batching sessions raises it)"
        )
        print(f"peak memory (inference): {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if dtype != torch.float32:
        reference = run_session(build(cfg, device, torch.float32), args.chunks, True).actions
        drift = max(float((a - b).abs().max()) for a, b in zip(cached.actions, reference, strict=True))
        scale = max(float(b.abs().max()) for b in reference)
        name = str(dtype)[6:]
        print(
            f"{name} drift against fp32 (same session and noise): max |d action| {drift:.4f} of {scale:.2f}"
        )
    del model
    if train:
        train_cfg = cfg.model_copy(update={"context_chunks": 4, "max_cache_chunks": None})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rate, per_step = train_rate(train_cfg, device, args.train_batch, args.train_steps)
        print(f"train: {rate:.1f} samples/s (windows of 1 + 4 chunks, batch {args.train_batch})")
        if device.type == "cuda":
            tokens = history_capacity(train_cfg) + 3 * query_length(train_cfg)
            flops = 3 * args.train_batch * dit_flops(train_cfg, params, tokens, tokens)
            print(f"train MFU: {100 * flops / per_step / (args.peak_tflops * 1e12):.2f}%")
            print(f"peak memory (training): {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA"
    )
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--wan-shape", action="store_true", help="also the wan2.1-1.3b shape (random weights)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak for MFU (H100 SXM: 989)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    report(args, args.preset, dtype, train=True)
    if args.wan_shape:
        report(args, "wan2.1-1.3b", dtype, train=False)


if __name__ == "__main__":
    main()
