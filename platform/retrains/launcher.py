"""Where a retrain runs: a local `wamfleet retrain` process, or a run on Kubeflow Pipelines.

A launcher only starts runs and notices the ones that ended without saying so. The runner itself
(`wamfleet retrain --run-id`, or the pipeline's components) marks its row running and finished
with the evidence; `poll()` marks a row failed only when its process or KFP run is over while the
row is still queued or running, so a crash never leaves a run blocking the policy forever.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from wamfleet.platform.catalog import retrains
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.contracts.retrain import RetrainRunInfo, RetrainStatus
from wamfleet.platform.entrypoint import WAMFLEET_CLI
from wamfleet.platform.settings import Settings, runner_env

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 8192


class LaunchError(RuntimeError):
    """The backend refused or could not start the run (the message says why)."""


class RetrainLauncher(Protocol):
    backend: Literal["local", "kfp"]

    def launch(self, run: RetrainRunInfo) -> str | None:
        """Starts the run; returns its id on the backend (recorded as the row's external_id)."""
        ...

    def poll(self) -> None:
        """Reaps finished work and marks rows whose runner ended without recording an outcome."""
        ...

    def close(self) -> None:
        """Releases what the launcher opened (it does not stop runs)."""
        ...


class _CatalogUser:
    """Uses the platform's catalog when given one, else opens (and later disposes) its own."""

    def __init__(self, settings: Settings, catalog: Catalog | None) -> None:
        self._settings = settings
        self._catalog = catalog
        self._owned = False
        self._catalog_lock = threading.Lock()

    @property
    def catalog(self) -> Catalog:
        with self._catalog_lock:
            if self._catalog is None:
                self._catalog = Catalog(self._settings.effective_catalog_url)
                self._owned = True
            return self._catalog

    def close(self) -> None:
        with self._catalog_lock:
            if self._owned and self._catalog is not None:
                self._catalog.dispose()
                self._catalog = None
                self._owned = False

    def _fail_if_active(self, run_id: str, error: str) -> bool:
        """Marks the run failed unless its runner already recorded an outcome; True if it did."""
        with self.catalog.session() as s:
            row = retrains.get_run(s, run_id, lock=True)  # another replica may be failing it too
            if row is None or row.status not in retrains.ACTIVE:
                return False
            retrains.mark_finished(s, run_id, succeeded=False, error=error, actor=f"launcher:{row.backend}")
        log.warning("retrain %s failed: %s", run_id, error.splitlines()[0] if error else "")
        return True


# Local --------------------------------------------------------------------------------------


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            data = f.read()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class _Local:
    run_id: str
    process: subprocess.Popen[bytes]
    log_path: Path


class LocalLauncher(_CatalogUser):
    """Runs `wamfleet retrain --run-id ID` as a child process on this machine.

    `command` replaces the argv prefix (default: this Python running the wamfleet CLI); the
    runner gets `retrain --run-id ID` appended, cwd = data_dir, output in
    `<data_dir>/retrains/<run_id>.log`. External ids are `host:pid`, so a platform restarted while
    a run was in flight can tell whether that process is still alive.
    """

    backend: Literal["local", "kfp"] = "local"

    def __init__(
        self, settings: Settings, catalog: Catalog | None = None, *, command: list[str] | None = None
    ) -> None:
        super().__init__(settings, catalog)
        self.command = list(command) if command is not None else list(WAMFLEET_CLI)
        self.logs_dir = settings.data_dir.resolve() / "retrains"
        self._running: dict[int, _Local] = {}
        self._orphans: dict[int, str] | None = None  # pid -> run id, from an earlier platform process
        self._lock = threading.Lock()  # guards _running (launch and poll run on different threads)
        self._poll_lock = threading.Lock()  # one poll at a time: the API's and the loop's
        self._host = socket.gethostname()

    def log_path(self, run_id: str) -> Path:
        return self.logs_dir / f"{run_id}.log"

    def launch(self, run: RetrainRunInfo) -> str:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(run.run_id)
        argv = [*self.command, "retrain", "--run-id", run.run_id]
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=self._settings.data_dir.resolve(),
                env=runner_env(self._settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: stopping the platform with Ctrl-C does not kill a retrain,
                # which records its own outcome in the catalog when it ends.
                start_new_session=True,
            )
        with self._lock:
            self._running[process.pid] = _Local(run.run_id, process, log_path)
        log.info("retrain %s started locally (pid %d, log %s)", run.run_id, process.pid, log_path)
        return f"{self._host}:{process.pid}"

    def running(self) -> dict[str, int]:
        """Run id -> pid of the children this launcher has not reaped yet."""
        with self._lock:
            return {job.run_id: pid for pid, job in self._running.items()}

    def poll(self) -> None:
        with self._poll_lock:
            self._reap()
            self._check_orphans()

    def _reap(self) -> None:
        with self._lock:
            done = [(job, job.process.poll()) for job in list(self._running.values())]
            done = [(job, code) for job, code in done if code is not None]
            for job, _ in done:
                del self._running[job.process.pid]
        for job, code in done:
            if code == 0:
                detail = "runner exited 0 without recording an outcome"
            else:
                detail = f"runner exited with code {code}"
            self._fail_if_active(
                job.run_id, f"{detail}; last lines of {job.log_path}:\n{log_tail(job.log_path)}"
            )

    def _check_orphans(self) -> None:
        """Local runs this process did not start (the platform restarted): failed once their pid is gone."""
        if self._orphans is None:
            self._orphans = {}
            with self.catalog.session() as s:
                rows = retrains.active_runs(s, backend="local")
            mine = self.running()
            for row in rows:
                host, _, pid_text = (row.external_id or "").rpartition(":")
                if host == self._host and pid_text.isdigit() and row.run_id not in mine:
                    self._orphans[int(pid_text)] = row.run_id
        for pid, run_id in list(self._orphans.items()):
            if not _alive(pid):
                del self._orphans[pid]
                self._fail_if_active(
                    run_id,
                    f"runner process {pid} is gone without recording an outcome (platform restarted?); "
                    f"last lines of {self.log_path(run_id)}:\n{log_tail(self.log_path(run_id))}",
                )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Kubeflow Pipelines ------------------------------------------------------------------------

_KFP_STATES: dict[str, RetrainStatus] = {
    "RUNTIME_STATE_UNSPECIFIED": "queued",
    "PENDING": "queued",
    "RUNNING": "running",
    "PAUSED": "running",
    "CANCELING": "running",
    "SUCCEEDED": "succeeded",
    "SKIPPED": "failed",
    "FAILED": "failed",
    "CANCELED": "failed",
}


def kfp_status(state: str | None) -> RetrainStatus | None:
    """A KFP v2 run state as a retrain status (None: unknown, leave the row alone)."""
    return _KFP_STATES.get((state or "RUNTIME_STATE_UNSPECIFIED").upper())


class KfpLauncher(_CatalogUser):
    """Submits a run of the newest version of an uploaded pipeline to a Kubeflow Pipelines host.

    The pipeline gets two parameters: `params_json` (the RetrainParams as JSON) and
    `retrain_run_id` (the catalog row its register step reports to); the pipeline is the one
    `wamfleet pipelines compile` writes and an operator uploads. `client` replaces
    `kfp.Client(host=...)`.
    """

    backend: Literal["local", "kfp"] = "kfp"

    def __init__(
        self,
        host: str,
        settings: Settings,
        catalog: Catalog | None = None,
        *,
        pipeline_name: str = "continuous-finetune",
        experiment: str = "wamfleet",
        client: Any = None,
    ) -> None:
        super().__init__(settings, catalog)
        self.host = host
        self.pipeline_name = pipeline_name
        self.experiment = experiment
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import kfp  # lazily: only a KFP deployment needs it

            self._client = kfp.Client(host=self.host)
        return self._client

    def launch(self, run: RetrainRunInfo) -> str:
        client = self.client
        pipeline_id = client.get_pipeline_id(self.pipeline_name)
        if pipeline_id is None:
            raise LaunchError(f"no pipeline named {self.pipeline_name!r} on {self.host}; upload it first")
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise LaunchError(f"pipeline {self.pipeline_name!r} on {self.host} has no versions")
        version_id = versions.pipeline_versions[0].pipeline_version_id
        experiment = client.create_experiment(name=self.experiment)  # returns the existing one
        result = client.run_pipeline(
            experiment_id=experiment.experiment_id,
            job_name=f"retrain-{run.run_id}",
            params={"params_json": run.params.model_dump_json(), "retrain_run_id": run.run_id},
            pipeline_id=pipeline_id,
            version_id=version_id,
        )
        log.info("retrain %s submitted to %s as KFP run %s", run.run_id, self.host, result.run_id)
        return str(result.run_id)

    def poll(self) -> None:
        with self.catalog.session() as s:
            rows = [
                (r.run_id, r.external_id) for r in retrains.active_runs(s, backend="kfp") if r.external_id
            ]
        for run_id, external_id in rows:
            try:
                kfp_run = self.client.get_run(external_id)
            except Exception:
                log.exception(
                    "reading KFP run %s (retrain %s) from %s failed", external_id, run_id, self.host
                )
                continue
            status = kfp_status(kfp_run.state)
            if status == "running":
                with self.catalog.session() as s:
                    row = retrains.get_run(s, run_id, lock=True)  # replicas poll the same runs
                    if row is not None and row.status == "queued":
                        retrains.mark_running(s, run_id, actor="launcher:kfp")
            elif status == "succeeded":
                with self.catalog.session() as s:
                    row = retrains.get_run(s, run_id, lock=True)
                    if row is not None and row.status in retrains.ACTIVE:
                        retrains.mark_finished(s, run_id, succeeded=True, actor="launcher:kfp")
            elif status == "failed":
                message = getattr(getattr(kfp_run, "error", None), "message", None)
                self._fail_if_active(
                    run_id,
                    f"KFP run {external_id} ended {kfp_run.state}" + (f": {message}" if message else ""),
                )


def launcher_for(settings: Settings, catalog: Catalog | None = None) -> RetrainLauncher:
    """KFP when `kfp_host` is set, else local processes."""
    if settings.kfp_host:
        return KfpLauncher(settings.kfp_host, settings, catalog)
    return LocalLauncher(settings, catalog)
