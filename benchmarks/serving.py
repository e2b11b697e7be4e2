"""Serving: protocol overhead (round trip minus the server's own time) for the openpi websocket,
KServe v2 REST and an in-process call; the websocket's overhead against openpi's own server
loop (benchmarks/openpi_reference.py), both measured by the published openpi-client in the same
run at 2x96x96 and 2x224x224; where a chunk's server time goes (validate, queue, encode,
denoise); and chunks/s and queue time for 1, 4 and 16 concurrent sessions with batching on and
off. Tiny random policy on CPU, everything on 127.0.0.1.

    python benchmarks/serving.py [--requests 30] [--openpi-python PATH]

openpi-client pins numpy<2, so it runs from its own venv: `--openpi-python` names its Python;
by default one is made under ~/.cache/wamfleet (pip install openpi-client; needs PyPI once).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from websockets.sync.client import connect

sys.path.append(str(Path(__file__).resolve().parents[1]))  # `python benchmarks/serving.py`
from tests.support.serve import serve_subprocess
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import load_policy, save_policy
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.platform.contracts.protocol import packb, unpackb
from wamfleet.serving.engine import InferRequest, PolicyEngine

TARGET_WS_OVERHEAD_MS = 2.0
TARGET_OVERHEAD_RATIO = 1.5  # our websocket overhead over openpi's reference loop's
EMBODIMENT = "sawyer-metaworld"
# openpi-client 0.1.2 imports typing_extensions without declaring it.
OPENPI_CLIENT = ("openpi-client==0.1.2", "typing_extensions")
REFERENCE = Path(__file__).with_name("openpi_reference.py")
DEFAULT_OPENPI_VENV = Path.home() / ".cache" / "wamfleet" / "openpi-client-venv"


def make_policy(directory: Path, size: int = 96, preset: str = "tiny") -> Path:
    torch.manual_seed(0)
    cfg = WAMConfig.preset_named(preset, embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}])
    entry = {"spec": sawyer_embodiment(size).model_dump(mode="json"), "action_norm": None, "state_norm": None}
    save_policy(directory, WorldActionModel(cfg), VideoCodec(cfg), embodiments={EMBODIMENT: entry})
    return directory


def openpi_python(given: str | None) -> str:
    """A Python with the published openpi-client (numpy<2 keeps it out of our own venv)."""
    if given:
        return given
    python = DEFAULT_OPENPI_VENV / "bin" / "python"
    if not python.exists():
        print(f"making {DEFAULT_OPENPI_VENV} with {OPENPI_CLIENT[0]} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_OPENPI_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OPENPI_CLIENT], check=True)
    return str(python)


@contextmanager
def reference_server(python: str, work_ms: float = 0.0) -> Iterator[int]:
    """openpi's WebsocketPolicyServer loop (benchmarks/openpi_reference.py) on a free port, its
    policy computing `work_ms` per message."""
    from wamfleet.platform.net import free_port

    port = free_port("127.0.0.1")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [python, str(REFERENCE), "serve", str(port), f"{work_ms:.3f}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the openpi reference server did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def openpi_client_round_trips(python: str, port: int, n: int, size: int) -> tuple[list[float], list[float]]:
    """Round trip minus the server's own time, and that server time, as openpi's
    WebsocketClientPolicy sees them."""
    cmd = [python, str(REFERENCE), "client", str(port), str(n), "2", str(size), "39", "reach"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return [float(v) for v in figures["overhead_ms"]], [float(v) for v in figures["server_ms"]]


def against_reference(python: str, policies: dict[int, Path], n: int, rounds: int = 3) -> None:
    """Ours against two references, alternated in rounds so all see the same box: openpi's loop
    with a policy that answers at once (the floor), and with one that computes as long as ours
    does (like for like: a client that waited tens of ms takes longer to wake)."""
    print("websocket overhead against openpi's own server loop (openpi-client, same run, alternated):")
    for size, policy in policies.items():
        with served(policy, max_batch=8) as url:
            port = int(url.rsplit(":", 1)[1])
            ours, server = openpi_client_round_trips(python, port, n, size)
            work_ms = statistics.median(server)
            idle: list[float] = []
            matched: list[float] = []
            with reference_server(python) as idle_port, reference_server(python, work_ms) as matched_port:
                for r in range(rounds):
                    if r:
                        ours += openpi_client_round_trips(python, port, n, size)[0]
                    idle += openpi_client_round_trips(python, idle_port, n, size)[0]
                    matched += openpi_client_round_trips(python, matched_port, n, size)[0]
        print(f"  2x{size}x{size}  wamfleet                          {summary(ours)}")
        print(f"  2x{size}x{size}  reference, policy answers at once  {summary(idle)}")
        print(f"  2x{size}x{size}  reference, policy computes {work_ms:5.1f} ms {summary(matched)}")
        for name, theirs in (("at once", idle), (f"{work_ms:.1f} ms", matched)):
            ratio = statistics.median(ours) / max(statistics.median(theirs), 1e-6)
            verdict = "met" if ratio <= TARGET_OVERHEAD_RATIO else "MISSED"
            print(
                f"  2x{size}x{size}  ratio to the reference ({name}) {ratio:.2f}"
                f" (target <= {TARGET_OVERHEAD_RATIO}: {verdict})"
            )


@contextmanager
def served(policy: Path, max_batch: int) -> Iterator[str]:
    with serve_subprocess(policy, extra_args=["--max-batch", str(max_batch)]) as url:
        yield url


def observation(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8), np.zeros(39, np.float32)


def websocket_overheads(url: str, n: int) -> list[float]:
    out = []
    with connect(url.replace("http", "ws"), max_size=None) as ws:
        ws.recv()
        for i in range(n):
            images, state = observation(i)
            start = time.perf_counter()
            ws.send(packb({"images": images, "state": state, "prompt": "reach", "session_id": "ws"}))
            reply = unpackb(ws.recv())  # type: ignore[arg-type]
            out.append((time.perf_counter() - start) * 1000 - reply["server_timing"]["total_ms"])
    return out


def rest_overheads(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            images, state = observation(i)
            body = {
                "inputs": [
                    {
                        "name": "images",
                        "shape": list(images.shape),
                        "datatype": "UINT8",
                        "data": images.ravel().tolist(),
                    },
                    {"name": "state", "shape": [39], "datatype": "FP32", "data": state.tolist()},
                    {"name": "instruction", "shape": [1], "datatype": "BYTES", "data": ["reach"]},
                    {"name": "session_id", "shape": [1], "datatype": "BYTES", "data": ["rest"]},
                ]
            }
            start = time.perf_counter()
            reply = client.post(f"{url}/v2/models/wam/infer", json=body).json()
            out.append((time.perf_counter() - start) * 1000 - reply["parameters"]["total_ms"])
    return out


def inprocess_overheads(policy: Path, n: int) -> list[float]:
    engine = PolicyEngine(load_policy(policy), version="bench", max_batch=1)
    out = []
    for i in range(n):
        images, state = observation(i)
        start = time.perf_counter()
        result = engine.infer(InferRequest("inproc", "reach", images, state))
        out.append((time.perf_counter() - start) * 1000 - result.timing.total_ms)
    return out


def chunks_per_second(url: str, sessions: int, requests_each: int) -> tuple[float, list[dict[str, float]]]:
    """Aggregate chunks/s of `sessions` robots asking at once, and every reply's server timing."""
    timings: list[dict[str, float]] = []

    def robot(k: int) -> None:
        with connect(url.replace("http", "ws"), max_size=None) as ws:
            ws.recv()
            for i in range(requests_each):
                images, state = observation(k * 1000 + i)
                frames = np.stack([images] * 4)
                ws.send(
                    packb({"images": frames, "state": state, "prompt": "reach", "session_id": f"robot-{k}"})
                )
                reply = unpackb(ws.recv())  # type: ignore[arg-type]
                if i > 0:  # the first builds the session (the conditioning frame, the instruction)
                    timings.append(reply["server_timing"])

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(sessions)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sessions * requests_each / (time.perf_counter() - start), timings


def stage_split(timings: list[dict[str, float]]) -> str:
    return "  ".join(
        f"{stage} {statistics.median(t[f'{stage}_ms'] for t in timings):6.2f}"
        for stage in ("validate", "queue", "encode", "denoise", "total")
    )


def encode_against_denoise(policy: Path, chunks: int) -> tuple[float, float]:
    """Median encode and denoise ms per chunk in one session, each request a whole chunk of new
    frames (the encode stage: the VAE on the chunk, then `observe` writing it into the cache)."""
    loaded = load_policy(policy)
    cfg = loaded.model.config
    size = cfg.view_size[0]
    engine = PolicyEngine(loaded, version="bench", max_batch=1)
    encode, denoise = [], []
    try:
        for i in range(chunks + 1):
            rng = np.random.default_rng(i)
            frames = rng.integers(0, 255, (cfg.video_frames_per_chunk, 2, size, size, 3), dtype=np.uint8)
            result = engine.infer(InferRequest("split", "reach", frames, np.zeros(39, np.float32)))
            if i > 0:  # the first request only starts the session
                encode.append(result.timing.encode_ms)
                denoise.append(result.timing.denoise_ms)
    finally:
        engine.close()
    return statistics.median(encode), statistics.median(denoise)


class WaitingBatcherEngine(PolicyEngine):
    """The reference for continuous batching: the batcher wamfleet had before it, which took
    the first request, then waited up to `max_wait_ms` for others to join its batch."""

    max_wait_s = 0.005

    def _worker(self) -> None:
        carry: list[Any] = []
        while not self._stopping.is_set():
            batch, carry = carry, []
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.1))
                except queue.Empty:
                    continue
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item: Any = self._queue.get(timeout=remaining)  # requests only: no warm-up here
                except queue.Empty:
                    break
                if any(p.request.key == item.request.key for p in batch):
                    carry.append(item)  # one session's requests run in order
                else:
                    batch.append(item)
            self._run_batch(batch)


def inprocess_throughput(engine: PolicyEngine, sessions: int, requests_each: int) -> tuple[float, float]:
    """Aggregate chunks/s of `sessions` threads asking at once, and the median queue ms."""
    queues: list[float] = []

    def robot(k: int) -> None:
        for i in range(requests_each + 1):
            images, state = observation(k * 1000 + i)
            result = engine.infer(InferRequest(f"robot-{k}", "reach", np.stack([images] * 4), state))
            if i > 0:
                queues.append(result.timing.queue_ms)

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(sessions)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sessions * (requests_each + 1) / (time.perf_counter() - start), statistics.median(queues)


def against_waiting_batcher(policy: Path, requests_each: int, rounds: int = 2) -> None:
    """Continuous batching against the batcher it replaced, in-process, alternated per round."""
    print(
        "continuous batching against the waiting batcher it replaced (in-process, max_batch 8, alternated):"
    )
    print("  sessions   continuous chunks/s  queue p50     waiting (5 ms) chunks/s  queue p50")
    loaded = load_policy(policy)
    for n in (1, 4, 16):
        figures: dict[str, list[tuple[float, float]]] = {"continuous": [], "waiting": []}
        for _ in range(rounds):
            for name, kind in (("continuous", PolicyEngine), ("waiting", WaitingBatcherEngine)):
                engine = kind(loaded, version="bench", max_batch=8)
                try:
                    figures[name].append(inprocess_throughput(engine, n, requests_each))
                finally:
                    engine.close()
        cont = [statistics.median(v) for v in zip(*figures["continuous"], strict=True)]
        wait = [statistics.median(v) for v in zip(*figures["waiting"], strict=True)]
        print(
            f"  {n:8d}   {cont[0]:19.1f}  {cont[1]:7.2f} ms   {wait[0]:22.1f}  {wait[1]:7.2f} ms"
            f"   ({cont[0] / wait[0]:.2f}x)"
        )


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):6.2f} ms  p99 {np.percentile(values, 99):6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--chunk-requests", type=int, default=6, help="requests per session for chunks/s")
    parser.add_argument("--openpi-python", help="a Python with openpi-client (default: a venv made once)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out openpi's reference server")
    parser.add_argument("--split-chunks", type=int, default=3, help="chunks per preset for encode/denoise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        policy = make_policy(Path(tmp) / "policy")
        if not args.skip_reference:
            policies = {96: policy, 224: make_policy(Path(tmp) / "policy224", 224)}
            against_reference(openpi_python(args.openpi_python), policies, args.requests)
        print(
            "encode stage against denoising, per chunk, in-process, 1 CPU thread (target: encode < denoise):"
        )
        for preset, size in (("tiny", 96), ("small", 128)):
            split_policy = make_policy(Path(tmp) / f"split-{preset}", size, preset)
            encode, denoise = encode_against_denoise(split_policy, args.split_chunks)
            verdict = "met" if encode < denoise else "MISSED"
            figures = f"encode {encode:9.1f} ms  denoise {denoise:9.1f} ms"
            print(f"  {preset:5s} 2x{size}x{size}  {figures}  ({verdict})")
        against_waiting_batcher(policy, args.chunk_requests)
        print("serving: tiny policy, 2 cameras at 96x96, 8-action chunks, CPU, 127.0.0.1")
        with served(policy, max_batch=8) as url:
            ws = websocket_overheads(url, args.requests)
            rest = rest_overheads(url, args.requests)
            inproc = inprocess_overheads(policy, args.requests)
            verdict = "met" if statistics.median(ws) <= TARGET_WS_OVERHEAD_MS else "MISSED"
            print("protocol overhead (round trip minus server time):")
            print(f"  websocket  {summary(ws)}  (target p50 <= {TARGET_WS_OVERHEAD_MS} ms: {verdict})")
            print(f"  v2 REST    {summary(rest)}")
            print(f"  in-process {summary(inproc)}")
            batched = {n: chunks_per_second(url, n, args.chunk_requests) for n in (1, 4, 16)}
        with served(policy, max_batch=1) as url:
            unbatched = {n: chunks_per_second(url, n, args.chunk_requests) for n in (1, 4, 16)}
        print("server time per chunk, median ms (batching on):")
        for n in (1, 4, 16):
            print(f"  {n:2d} sessions  {stage_split(batched[n][1])}")
        print("chunks/s by concurrent sessions   batching on   batching off   queue p50 on / off (ms)")
        for n in (1, 4, 16):
            (on, on_t), (off, off_t) = batched[n], unbatched[n]
            q_on = statistics.median(t["queue_ms"] for t in on_t)
            q_off = statistics.median(t["queue_ms"] for t in off_t)
            queues = f"{q_on:7.2f} / {q_off:7.2f}"
            print(f"  {n:2d} sessions                     {on:8.1f}     {off:8.1f}      {queues}")


if __name__ == "__main__":
    main()
