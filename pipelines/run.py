"""Running `continuous_finetune`: locally with kfp.local (subprocesses + a local Ray), or on a
Kubeflow Pipelines host.

Locally every component runs as a subprocess of this Python (no containers, no pip installs)
with the caller's WAMFLEET_* settings in its environment (the caller's own os.environ is as it
was once the run ends); artifacts go under
<data_dir>/kfp. On a cluster the compiled pipeline is submitted to the KFP API and its
components run in the pipeline image with settings from the chart's Secret and ConfigMap.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wamfleet.platform.contracts.retrain import RetrainParams
from wamfleet.platform.settings import Settings, runner_env

if TYPE_CHECKING:
    from wamfleet.platform.catalog.db import Catalog

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_START = re.compile(r"Executing task '([^']+)'")


@dataclass(frozen=True)
class LocalRun:
    version: str
    candidate: bool
    pipeline_root: Path


class PipelineFailed(RuntimeError):
    pass


def run_local(
    settings: Settings,
    params: RetrainParams,
    retrain_run_id: str = "",
    on_step: Callable[[str], None] | None = None,
) -> LocalRun:
    """Runs the whole pipeline here; raises PipelineFailed naming the failing step and its error.
    `on_step` hears each step's name (pipeline.STEPS) as it starts."""
    from kfp import local

    from wamfleet.pipelines.pipeline import continuous_finetune
    from wamfleet.pipelines.steps import ERROR_FILE_ENV

    root = (settings.data_dir / "kfp").resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with tempfile.TemporaryDirectory() as tmp:
        errors = Path(tmp) / "errors.txt"
        env = runner_env(settings)  # the same environment every child process of the platform gets
        env.setdefault("OMP_NUM_THREADS", "1")
        env[ERROR_FILE_ENV] = str(errors)
        try:
            with steps_environment(env), step_announcements(on_step):
                task = continuous_finetune(
                    params_json=params.model_dump_json(), retrain_run_id=retrain_run_id
                )
        except RuntimeError as exc:
            found = errors.read_text().strip() if errors.exists() else ""
            raise PipelineFailed(found or str(exc)) from exc
    return LocalRun(
        version=str(task.outputs["version"]), candidate=bool(task.outputs["candidate"]), pipeline_root=root
    )


@contextmanager
def steps_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ is `env` while the pipeline runs, then the caller's again: kfp.local's
    SubprocessRunner takes no environment, each step inherits os.environ when it starts.
    Only the variables that differ are set and put back, so the rest never flickers."""
    changed = {key: os.environ.get(key) for key in {*os.environ, *env} if os.environ.get(key) != env.get(key)}
    try:
        for key in changed:
            if key in env:
                os.environ[key] = env[key]
            else:
                del os.environ[key]
        yield
    finally:
        for key, value in changed.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _StepWatcher(logging.Filter):
    """Hears kfp.local announce each task on the root logger ("Executing task 'curate'")."""

    def __init__(self, on_step: Callable[[str], None]) -> None:
        super().__init__()
        self.on_step = on_step

    def filter(self, record: logging.LogRecord) -> bool:
        if match := TASK_START.search(ANSI.sub("", str(record.msg))):
            self.on_step(match.group(1))
        return True


@contextmanager
def step_announcements(on_step: Callable[[str], None] | None) -> Iterator[None]:
    """A filter on the root logger is the hook kfp.local leaves: it swaps the root's handlers for
    its own while each task runs, and logs the task's start there."""
    if on_step is None:
        yield
        return
    watcher = _StepWatcher(on_step)
    root = logging.getLogger()
    root.addFilter(watcher)
    try:
        yield
    finally:
        root.removeFilter(watcher)


def failure_message(exc: BaseException) -> str:
    """The error as a retrain run records it: its type and text, without kfp's terminal colours."""
    return ANSI.sub("", f"{type(exc).__name__}: {exc}").strip()


def run_recorded(
    settings: Settings,
    catalog: Catalog,
    params: RetrainParams,
    retrain_run_id: str,
    on_step: Callable[[str], None] | None = None,
) -> LocalRun:
    """run_local for a retrain run in the catalog: marks it running, and failed with the error when the
    pipeline fails (then re-raises); the register step marks it succeeded."""
    from wamfleet.platform.catalog import retrains

    with catalog.session() as session:
        retrains.mark_running(session, retrain_run_id)
    try:
        return run_local(settings, params, retrain_run_id, on_step)
    except Exception as exc:
        with catalog.session() as session:
            retrains.mark_finished(
                session, retrain_run_id, succeeded=False, error=failure_message(exc)[-4000:]
            )
        raise


def submit(host: str, params: RetrainParams, retrain_run_id: str = "", experiment: str = "wamfleet") -> str:
    """Submits a run to Kubeflow Pipelines; returns the KFP run id."""
    import kfp

    from wamfleet.pipelines.pipeline import PIPELINE_NAME, compile_pipeline

    client = kfp.Client(host=host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / f"{PIPELINE_NAME}.yaml")
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments={"params_json": params.model_dump_json(), "retrain_run_id": retrain_run_id},
            run_name=f"retrain-{retrain_run_id}" if retrain_run_id else None,
            experiment_name=experiment,
        )
    return str(run.run_id)
