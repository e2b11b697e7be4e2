"""Serving: protocol overhead (round trip minus the server's own time) for the openpi websocket,
KServe v2 REST and an in-process call, and chunks/s for 1, 4 and 16 concurrent sessions with
batching on and off. Tiny random policy on CPU, 2 cameras at 96x96, everything on 127.0.0.1.

    python benchmarks/serving.py [--requests 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from websockets.sync.client import connect

from wamfleet.fleet_agent.sim.metaworld_robot import sawyer_embodiment
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import load_policy, save_policy
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.platform.contracts.protocol import packb, unpackb
from wamfleet.serving.engine import InferRequest, PolicyEngine
from wamfleet.serving.launch import serve_subprocess

TARGET_WS_OVERHEAD_MS = 2.0
EMBODIMENT = "sawyer-metaworld"


def make_policy(directory: Path) -> Path:
    torch.manual_seed(0)
    cfg = WAMConfig.preset_named("tiny", embodiments=[{"name": EMBODIMENT, "state_dim": 39, "action_dim": 4}])
    entry = {"spec": sawyer_embodiment(96).model_dump(mode="json"), "action_norm": None, "state_norm": None}
    save_policy(directory, WorldActionModel(cfg), VideoCodec(cfg), embodiments={EMBODIMENT: entry})
    return directory


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


def chunks_per_second(url: str, sessions: int, requests_each: int) -> float:
    def robot(k: int) -> None:
        with connect(url.replace("http", "ws"), max_size=None) as ws:
            ws.recv()
            for i in range(requests_each):
                images, state = observation(k * 1000 + i)
                frames = np.stack([images] * 4)
                ws.send(
                    packb({"images": frames, "state": state, "prompt": "reach", "session_id": f"robot-{k}"})
                )
                ws.recv()

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(sessions)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sessions * requests_each / (time.perf_counter() - start)


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):6.2f} ms  p99 {np.percentile(values, 99):6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--chunk-requests", type=int, default=6, help="requests per session for chunks/s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        policy = make_policy(Path(tmp) / "policy")
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
        print("chunks/s by concurrent sessions   batching on   batching off")
        for n in (1, 4, 16):
            print(f"  {n:2d} sessions                     {batched[n]:8.1f}     {unbatched[n]:8.1f}")


if __name__ == "__main__":
    main()
