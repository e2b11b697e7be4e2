"""openpi's side of the serving benchmark, run with a Python that has the published openpi-client
(it pins numpy<2, so it lives in its own venv; benchmarks/serving.py makes one).

    python openpi_reference.py serve PORT [WORK_MS]   the reference server
    python openpi_reference.py client PORT N CAMS SIZE STATE_DIM PROMPT
                                                      N round trips, printed as JSON

The reference server is openpi's WebsocketPolicyServer loop and nothing else: websockets'
asyncio server without compression, openpi_client.msgpack_numpy, the metadata sent on connect,
and per message unpack -> infer -> `server_timing.infer_ms` -> pack -> send. Its policy computes
for WORK_MS (default 0), spinning as a CPU-bound policy keeps its core busy, so whatever a round
trip costs beyond `infer_ms` is protocol overhead. The work matters: after a policy that computes
for tens of milliseconds the client has slept that long, and waking it costs time that a policy
answering at once never pays. The client is openpi's own WebsocketClientPolicy; both servers are
measured with it, the same way.

This file imports nothing from wamfleet: it must run in the openpi-client venv.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import numpy as np


def serve(port: int, work_ms: float = 0.0) -> None:
    import websockets.asyncio.server as ws_server
    from openpi_client import msgpack_numpy

    actions = np.zeros((8, 4), np.float32)

    async def handler(websocket: Any) -> None:
        packer = msgpack_numpy.Packer()
        await websocket.send(packer.pack({"reference": "openpi WebsocketPolicyServer loop"}))
        prev_total_ms = None
        while True:
            try:
                start = time.monotonic()
                obs = msgpack_numpy.unpackb(await websocket.recv())
                infer_start = time.monotonic()
                while time.monotonic() - infer_start < work_ms / 1000:
                    pass  # the policy's compute
                reply: dict[str, Any] = {"actions": actions, "state_seen": obs["state"][:1]}
                timing = {"infer_ms": (time.monotonic() - infer_start) * 1000}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply["server_timing"] = timing
                await websocket.send(packer.pack(reply))
                prev_total_ms = (time.monotonic() - start) * 1000
            except Exception:  # noqa: BLE001 - the client went away: openpi's loop ends here too
                return

    async def main() -> None:
        async with ws_server.serve(handler, "127.0.0.1", port, compression=None, max_size=None) as server:
            print("ready", flush=True)
            await server.serve_forever()

    asyncio.run(main())


def client(port: int, n: int, cams: int, size: int, state_dim: int, prompt: str) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    policy = WebsocketClientPolicy(host="127.0.0.1", port=port)
    rng = np.random.default_rng(0)
    overheads, server = [], []
    for i in range(n + 2):  # the first two warm both ends up
        obs = {
            "images": rng.integers(0, 255, (cams, size, size, 3), dtype=np.uint8),
            "state": np.zeros(state_dim, np.float32),
            "prompt": prompt,
        }
        start = time.perf_counter()
        reply = policy.infer(obs)
        elapsed_ms = (time.perf_counter() - start) * 1000
        timing = reply["server_timing"]
        server_ms = timing["total_ms"] if "total_ms" in timing else timing["infer_ms"]
        if i >= 2:
            overheads.append(elapsed_ms - server_ms)
            server.append(server_ms)
    print(json.dumps({"overhead_ms": overheads, "server_ms": server}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    else:
        port, n, cams, size, state_dim = (int(v) for v in sys.argv[2:7])
        client(port, n, cams, size, state_dim, sys.argv[7])
