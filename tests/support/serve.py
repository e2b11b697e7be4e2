"""Running `wamfleet serve` as a child process on loopback (the serving tests and benchmarks).

KServe's ModelServer owns its process (signal handlers, event loop), so a caller that needs a
policy endpoint next to its own work starts one as a subprocess and waits for readiness. (The
platform's local rollouts start theirs in wamfleet.platform.rollouts.backends.local.)
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from wamfleet.platform.entrypoint import WAMFLEET_CLI
from wamfleet.platform.net import free_port


@contextmanager
def serve_subprocess(
    policy: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    name: str = "wam",
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
) -> Iterator[str]:
    """Yields the server's base URL once /v2/models/<name>/ready answers; stops it on exit."""
    port = port or free_port(host)
    cmd = [*WAMFLEET_CLI, "serve", "--policy", str(policy)]
    cmd += ["--host", host, "--port", str(port), "--name", name, *(extra_args or [])]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"wamfleet serve exited with code {proc.returncode} (log: {log_path})")
            try:
                if httpx.get(f"{url}/v2/models/{name}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"wamfleet serve was not ready within {ready_timeout_s:.0f}s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if log_path:
            log.close()  # type: ignore[union-attr]
