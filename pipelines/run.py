"""Running `continuous_finetune`: locally with kfp.local (subprocesses + a local Ray), or on a
Kubeflow Pipelines host.

Locally every component runs as a subprocess of this Python (no containers, no pip installs)
with the caller's WAMFLEET_* settings in its environment; artifacts go under
<data_dir>/kfp. On a cluster the compiled pipeline is submitted to the KFP API and its
components run in the pipeline image with settings from the chart's Secret and ConfigMap.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wamfleet.platform.contracts.retrain import RetrainParams
from wamfleet.platform.settings import ENV_PREFIX, Settings, runner_env

if TYPE_CHECKING:
    from wamfleet.platform.catalog.db import Catalog

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class LocalRun:
    version: str
    candidate: bool
    pipeline_root: Path


class PipelineFailed(RuntimeError):
    pass


def run_local(settings: Settings, params: RetrainParams, retrain_run_id: str = "") -> LocalRun:
    """Runs the whole pipeline here; raises PipelineFailed naming the failing step and its error."""
    from kfp import local

    from wamfleet.pipelines.pipeline import continuous_finetune
    from wamfleet.pipelines.steps import ERROR_FILE_ENV

    root = (settings.data_dir / "kfp").resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = runner_env(settings)  # the same environment every child process of the platform gets
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX) and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with tempfile.TemporaryDirectory() as tmp:
        errors = Path(tmp) / "errors.txt"
        os.environ[ERROR_FILE_ENV] = str(errors)
        try:
            task = continuous_finetune(params_json=params.model_dump_json(), retrain_run_id=retrain_run_id)
        except RuntimeError as exc:
            found = errors.read_text().strip() if errors.exists() else ""
            raise PipelineFailed(found or str(exc)) from exc
        finally:
            os.environ.pop(ERROR_FILE_ENV, None)
    return LocalRun(
        version=str(task.outputs["version"]), candidate=bool(task.outputs["candidate"]), pipeline_root=root
    )


def failure_message(exc: BaseException) -> str:
    """The error as a retrain run records it: its type and text, without kfp's terminal colours."""
    return ANSI.sub("", f"{type(exc).__name__}: {exc}").strip()


def run_recorded(
    settings: Settings, catalog: Catalog, params: RetrainParams, retrain_run_id: str
) -> LocalRun:
    """run_local for a retrain run in the catalog: marks it running, and failed with the error when the
    pipeline fails (then re-raises); the register step marks it succeeded."""
    from wamfleet.platform.catalog import retrains

    with catalog.session() as session:
        retrains.mark_running(session, retrain_run_id)
    try:
        return run_local(settings, params, retrain_run_id)
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
