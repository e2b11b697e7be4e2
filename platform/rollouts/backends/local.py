"""Policy versions served by `wamfleet serve` processes on this machine (the embedded default).

One process per version, on a free port of `host`, reaching the platform's MLflow registry
through the environment `runner_env` builds. Each process runs in its own session: stopping
or crashing the platform does not stop the servers robots are driving with, and the next
platform process adopts them from the `policy_endpoints` rows (handle `host:pid`). Rows whose
process is gone, or belongs to another machine, are replaced by a fresh start.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select

from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import audit, now
from wamfleet.platform.catalog.tables import PolicyEndpoint
from wamfleet.platform.contracts.rollout import Endpoint
from wamfleet.platform.entrypoint import WAMFLEET_CLI
from wamfleet.platform.net import free_port
from wamfleet.platform.retrains.launcher import log_tail
from wamfleet.platform.rollouts.backends.base import (
    BackendName,
    ServingBackend,
    ServingError,
    check_version,
    model_uri,
    version_label,
)
from wamfleet.platform.settings import Settings, runner_env

log = logging.getLogger(__name__)
SERVED_NAME = "wam"  # `wamfleet serve --name`: readiness at /v2/models/wam/ready
ACTOR = "backend:local"
_ANY_ADDRESS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class LocalHandle:
    """`host:pid` of a server process, as recorded in `policy_endpoints.handle`."""

    host: str
    pid: int

    @classmethod
    def parse(cls, text: str) -> LocalHandle | None:
        host, _, pid = text.rpartition(":")
        return cls(host, int(pid)) if host and pid.isdigit() else None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def process_alive(pid: int) -> bool:
    """True while `pid` runs; reaps it when it is an exited child of this process (no zombies)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, another process's child) still answers kill(0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def process_serves(pid: int, port: int, label: str) -> bool:
    """Whether `pid` is the `serve` process recorded for this port and version (pids get reused).

    Reads /proc on Linux; elsewhere it cannot tell and trusts the record.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()
    args = [a.decode(errors="replace") for a in argv]
    pairs = set(itertools.pairwise(args))
    return "serve" in args and ("--port", str(port)) in pairs and ("--version", label) in pairs


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """The server leads its own process group (its own session): signal every process in it."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    except PermissionError:
        log.warning("not allowed to signal process group %d", pid)


class LocalServingBackend(ServingBackend):
    """`wamfleet serve --policy models:/<registered_model>/<version>` per version, on loopback.

    Endpoints are `ws://<public_host or host>:<port>` (the openpi websocket; KServe v2 REST is on
    the same port). `command` replaces the argv prefix (default: this Python running the wamfleet
    CLI); `serve_args` are appended (`--device cuda`, `--max-batch 4`, ...). Output goes to
    `<data_dir>/serving/<version>.log`, appended across restarts.
    """

    backend: ClassVar[BackendName] = "local"

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        host: str = "127.0.0.1",
        public_host: str | None = None,
        command: Sequence[str] | None = None,
        serve_args: Sequence[str] = (),
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.model_name = settings.registered_model
        self.host = host
        self._check_host = "127.0.0.1" if host in _ANY_ADDRESS else host
        self.public_host = public_host or (socket.gethostname() if host in _ANY_ADDRESS else host)
        self.command = list(command) if command is not None else list(WAMFLEET_CLI)
        self.serve_args = list(serve_args)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.logs_dir = settings.data_dir.resolve() / "serving"
        self._hostname = socket.gethostname()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._starting: set[str] = set()  # recorded (a restart can find them) but not ready yet
        self._lock = threading.Lock()  # guards _children, _locks and _starting
        self._http = httpx.Client(timeout=2.0, trust_env=False)  # loopback: never through a proxy

    # The interface ---------------------------------------------------------------------------

    def ensure(self, version: str) -> Endpoint:
        check_version(version)
        with self._version_lock(version):
            row = self._record(version)
            if row is not None:
                adopted = self._adopt(row)
                if adopted is not None:
                    return adopted
            return self._start(version)

    def stop(self, version: str) -> None:
        with self._version_lock(version):
            row = self._record(version)
            with self._lock:
                child = self._children.pop(version, None)
            if child is not None:
                self._terminate(child.pid, child)
            handle = LocalHandle.parse(row.handle) if row is not None else None
            port = urlsplit(row.url).port if row is not None else None
            if (
                handle is not None
                and port is not None
                and handle.host == self._hostname
                and (child is None or child.pid != handle.pid)
                and process_alive(handle.pid)
                and process_serves(handle.pid, port, version_label(self.model_name, version))
            ):
                self._terminate(handle.pid)
            if row is not None:
                self._forget(version, "endpoint.stop", url=row.url, handle=row.handle)
                log.info("stopped the server of %s (%s)", version_label(self.model_name, version), row.handle)

    def endpoints(self) -> dict[str, Endpoint]:
        """Recorded endpoints, except those this backend is still starting (robots would get no answer)."""
        with self._lock:
            starting = set(self._starting)
        with self.catalog.session() as s:
            rows = s.scalars(
                select(PolicyEndpoint).where(
                    PolicyEndpoint.model_name == self.model_name, PolicyEndpoint.backend == self.backend
                )
            ).all()
            return {
                row.version: Endpoint(version=row.version, url=row.url)
                for row in rows
                if row.version not in starting
            }

    def healthy(self, version: str) -> bool:
        row = self._record(version)
        if row is None:
            return False
        handle = LocalHandle.parse(row.handle)
        port = urlsplit(row.url).port
        if handle is None or port is None or handle.host != self._hostname:
            return False
        return self._alive(version, handle.pid) and self._ready(port)

    def close(self) -> None:
        """Closes the HTTP client and reaps exited children; running servers keep serving."""
        with self._lock:
            for version, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[version]
        self._http.close()

    # Helpers ----------------------------------------------------------------------------------

    def log_path(self, version: str) -> Path:
        return self.logs_dir / f"{version}.log"

    def _version_lock(self, version: str) -> threading.Lock:
        """One start or stop of a version at a time (the API and the controller run on threads)."""
        with self._lock:
            return self._locks.setdefault(version, threading.Lock())

    def _record(self, version: str) -> PolicyEndpoint | None:
        with self.catalog.session() as s:
            row = s.get(PolicyEndpoint, (version, self.model_name))
            return row if row is not None and row.backend == self.backend else None

    def _forget(self, version: str, action: str, **details: str) -> None:
        with self.catalog.session() as s:
            row = s.get(PolicyEndpoint, (version, self.model_name))
            if row is not None:
                s.delete(row)
            audit(s, ACTOR, action, version_label(self.model_name, version), **details)

    def _alive(self, version: str, pid: int) -> bool:
        with self._lock:
            child = self._children.get(version)
        if child is not None and child.pid == pid:
            return child.poll() is None
        return process_alive(pid)

    def _ready(self, port: int) -> bool:
        try:
            url = f"http://{self._check_host}:{port}/v2/models/{SERVED_NAME}/ready"
            return self._http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_ready(self, port: int, alive: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._ready(port):
                return True
            if not alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.25)

    def _adopt(self, row: PolicyEndpoint) -> Endpoint | None:
        """The recorded server once it answers ready (it may still be loading); else it is retired.

        A server that never becomes ready is stopped; a row whose process is gone, or lives on
        another machine (its loopback URL means nothing here), is dropped.
        """
        version, label = row.version, version_label(self.model_name, row.version)
        handle = LocalHandle.parse(row.handle)
        port = urlsplit(row.url).port
        if (
            handle is not None
            and port is not None
            and handle.host == self._hostname
            and self._alive(version, handle.pid)
            and process_serves(handle.pid, port, label)
        ):
            pid = handle.pid
            if self._wait_ready(port, lambda: self._alive(version, pid), self.ready_timeout_s):
                return Endpoint(version=version, url=row.url)
            log.warning("the recorded server of %s (%s) is not ready; replacing it", label, row.handle)
            with self._lock:
                child = self._children.pop(version, None)
            self._terminate(pid, child if child is not None and child.pid == pid else None)
        else:
            log.info("the recorded server of %s (%s) is gone; starting a new one", label, row.handle)
        self._forget(version, "endpoint.retire", url=row.url, handle=row.handle)
        return None

    def _start(self, version: str) -> Endpoint:
        label = version_label(self.model_name, version)
        port = free_port(self.host)
        argv = [*self.command, "serve", "--policy", model_uri(self.model_name, version)]
        argv += ["--host", self.host, "--port", str(port), "--name", SERVED_NAME, "--version", label]
        argv += self.serve_args
        env = runner_env(self.settings)
        # `wamfleet serve` prefers MLFLOW_TRACKING_URI: an inherited one must not point elsewhere.
        env["MLFLOW_TRACKING_URI"] = self.settings.effective_mlflow_uri
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(version)
        with log_path.open("ab") as out:
            out.write(f"--- {now().isoformat()} {' '.join(argv)}\n".encode())
            out.flush()
            child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: a platform stopped with Ctrl-C (or crashed) leaves the server
                # to the robots using it; the next platform process adopts it from the record.
                start_new_session=True,
            )
        with self._lock:
            self._children[version] = child
            self._starting.add(version)
        url = f"ws://{self.public_host}:{port}"
        handle = str(LocalHandle(self._hostname, child.pid))
        try:
            with self.catalog.session() as s:
                s.merge(
                    PolicyEndpoint(
                        version=version,
                        model_name=self.model_name,
                        backend=self.backend,
                        url=url,
                        handle=handle,
                        started_at=now(),
                    )
                )
                audit(s, ACTOR, "endpoint.start", label, url=url, handle=handle, log=str(log_path))
            log.info("serving %s at %s (pid %d, log %s)", label, url, child.pid, log_path)
            ready = self._wait_ready(port, lambda: child.poll() is None, self.ready_timeout_s)
        except BaseException:  # interrupted: leave nothing running behind
            self._abandon(version, child)
            raise
        finally:
            with self._lock:
                self._starting.discard(version)
        if not ready:
            code = child.poll()
            self._abandon(version, child)
            why = (
                f"exited with code {code}" if code is not None else f"not ready in {self.ready_timeout_s:g}s"
            )
            raise ServingError(
                f"wamfleet serve for {label}: {why}; last lines of {log_path}:\n{log_tail(log_path)}"
            )
        return Endpoint(version=version, url=url)

    def _abandon(self, version: str, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._children.get(version) is child:
                del self._children[version]
        self._terminate(child.pid, child)
        self._forget(version, "endpoint.failed", handle=f"{self._hostname}:{child.pid}")

    def _terminate(self, pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
        """SIGTERM to the server's group (KServe drains requests in flight), SIGKILL after the grace."""
        _signal_group(pid, signal.SIGTERM)
        if not self._wait_gone(pid, child, self.stop_timeout_s):
            log.warning("server %d ignored SIGTERM for %gs; killing it", pid, self.stop_timeout_s)
            _signal_group(pid, signal.SIGKILL)
            self._wait_gone(pid, child, 10.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # anything the server left behind in its group

    @staticmethod
    def _wait_gone(pid: int, child: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
        if child is not None:
            try:
                child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while process_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
