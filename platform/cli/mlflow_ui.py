"""The MLflow UI over the embedded store: `mlflow server` on loopback, reading the same SQLite
registry and artifact directory the pipeline writes, so the demo (and the dashboard's links) can
point a browser at every run and version while the flywheel turns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from wamfleet.platform.net import free_port
from wamfleet.platform.settings import Settings


@dataclass
class MlflowUi:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def ready(self, timeout_s: float) -> bool:
        """Waits for /health; False if the server died or did not answer in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # uvicorn's workers too
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_mlflow_ui(settings: Settings, host: str = "127.0.0.1", port: int = 0) -> MlflowUi:
    """Starts the server in its own session (log in <data_dir>/logs/mlflow-ui.log); does not wait."""
    port = port or free_port(host)
    artifacts = (settings.data_dir / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log = settings.data_dir / "logs" / "mlflow-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.effective_mlflow_uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return MlflowUi(url=f"http://{host}:{port}", process=process, log=log)
