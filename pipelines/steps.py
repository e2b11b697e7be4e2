"""The pipeline's steps as plain functions of strings: what each KFP component calls.

Every step reads its settings from WAMFLEET_* (a Secret and ConfigMap on the cluster, the
caller's environment under kfp.local), passes only hashes, keys and small JSON downstream,
and leaves its real output in the object store or MLflow, so a step can run on any pod.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ParamSpec, TypeVar

from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.contracts.retrain import RetrainParams
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.base import ObjectStore
from wamfleet.platform.storage.factory import open_object_store

log = logging.getLogger(__name__)
ACTOR = "pipeline"
ERROR_FILE_ENV = "WAMFLEET_PIPELINE_ERROR_FILE"
P = ParamSpec("P")
R = TypeVar("R")


def step(func: Callable[P, R]) -> Callable[P, R]:
    """Names the failing step and its error in WAMFLEET_PIPELINE_ERROR_FILE when that is set:
    kfp.local reports only that a task failed, and the retrain run should say why."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            target = os.environ.get(ERROR_FILE_ENV)
            if target:
                name = func.__name__.removesuffix("_step")
                with open(target, "a", encoding="utf-8") as f:
                    f.write(f"{name}: {type(exc).__name__}: {exc}\n")
            raise

    return wrapper


@dataclass
class StepContext:
    settings: Settings

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.effective_catalog_url)

    @cached_property
    def store(self) -> ObjectStore:
        return open_object_store(self.settings)


def context() -> StepContext:
    return StepContext(Settings())


def parse_params(params_json: str) -> RetrainParams:
    return RetrainParams.model_validate_json(params_json or "{}")


@step
def snapshot_step(params_json: str) -> str:
    from wamfleet.pipelines.snapshot import freeze_snapshot

    ctx = context()
    snapshot = freeze_snapshot(ctx.catalog, ctx.store, parse_params(params_json).snapshot, actor=ACTOR)
    log.info("snapshot %s: %d episodes", snapshot.snapshot_hash, len(snapshot.episodes))
    return snapshot.snapshot_hash


@step
def validate_step(snapshot_hash: str) -> str:
    """Returns a one-line summary; the report is stored next to the snapshot."""
    from wamfleet.pipelines.snapshot import load_snapshot
    from wamfleet.pipelines.validate import validate_snapshot

    ctx = context()
    report = validate_snapshot(ctx.catalog, ctx.store, load_snapshot(ctx.store, snapshot_hash), actor=ACTOR)
    summary = {"ok": len(report.ok_ids), "quarantined": len(report.quarantined), "decoded": report.checked}
    if not report.ok_ids:
        raise ValueError(f"validate: every episode of snapshot {snapshot_hash} is quarantined")
    return json.dumps(summary)


@step
def curate_step(snapshot_hash: str, params_json: str) -> str:
    from wamfleet.pipelines.curate import curate, save_curated
    from wamfleet.pipelines.snapshot import load_snapshot
    from wamfleet.pipelines.validate import load_validation

    ctx = context()
    params = parse_params(params_json)
    snapshot = load_snapshot(ctx.store, snapshot_hash)
    validation = load_validation(ctx.store, snapshot_hash)
    dataset = curate(
        snapshot,
        validation.ok_ids,
        ctx.settings,
        params.recipe,
        workers=params.curation_workers,
        ray_address=ctx.settings.ray_address,
    )
    save_curated(ctx.store, dataset)
    if not dataset.episodes:
        raise ValueError(f"curate: no episode of snapshot {snapshot_hash} passed curation")
    return str(dataset.dataset_hash)


@dataclass(frozen=True)
class ShardsOutput:
    index_key: str
    parent_version: str  # "" when training a new model


@step
def shards_step(snapshot_hash: str, dataset_hash: str, params_json: str) -> ShardsOutput:
    """Resolves the parent version once (later steps use this version, even if aliases move)."""
    from mlflow import MlflowClient

    from wamfleet.pipelines.curate import load_curated
    from wamfleet.pipelines.registry import configure_mlflow, find_version, model_uri
    from wamfleet.pipelines.shards import build_shards
    from wamfleet.pipelines.snapshot import load_snapshot
    from wamfleet.serving.predictor import resolve_policy

    ctx = context()
    params = parse_params(params_json)
    configure_mlflow(ctx.settings)
    name = ctx.settings.registered_model
    parent = find_version(MlflowClient(), name, params.parent)
    snapshot = load_snapshot(ctx.store, snapshot_hash)
    versions = {e.embodiment: e.embodiment_version for e in snapshot.episodes}
    dataset = load_curated(ctx.store, snapshot_hash, dataset_hash)
    parent_dir = resolve_policy(model_uri(name, parent.version)) if parent is not None else None
    index = build_shards(
        ctx.catalog,
        ctx.store,
        dataset,
        versions,
        parent_dir=parent_dir,
        parent=str(parent.version) if parent is not None else None,
        preset=params.preset,
        seed=params.seed,
    )
    return ShardsOutput(index.key, str(parent.version) if parent is not None else "")


@step
def finetune_step(
    index_key: str, parent_version: str, params_json: str, pipeline_run: str, policy_path: str
) -> str:
    """Trains into `policy_path` (the KFP Model artifact's path); returns the MLflow run id."""
    import mlflow

    from wamfleet.pipelines.finetune import FinetuneConfig, finetune
    from wamfleet.pipelines.registry import configure_mlflow, model_uri
    from wamfleet.pipelines.shards import load_index

    ctx = context()
    params = parse_params(params_json)
    index = load_index(ctx.store, index_key)
    experiment = configure_mlflow(ctx.settings)
    name = ctx.settings.registered_model
    parent_uri = model_uri(name, parent_version) if parent_version else None
    config = FinetuneConfig(
        mode=params.mode,
        lora_rank=params.lora_rank,
        steps=params.steps,
        batch_size=params.batch_size,
        lr=params.lr,
        lr_schedule=params.lr_schedule,
        seed=params.seed,
        workers=params.workers,
        threads_per_worker=params.threads_per_worker,
        use_gpu=params.use_gpu,
    )
    with mlflow.start_run(experiment_id=experiment, run_name=f"finetune-{index.dataset_hash[:12]}") as run:
        mlflow.log_params(
            {
                "mode": params.mode,
                "lora_rank": params.lora_rank,
                "steps": params.steps,
                "batch_size": params.batch_size,
                "lr": params.lr,
                "lr_schedule": params.lr_schedule,
                "workers": params.workers,
                "seed": params.seed,
                "preset": index.config.get("preset", params.preset),
                "parent_version": parent_version or "none",
                "train_windows": index.windows("train"),
                "holdout_windows": index.windows("holdout"),
            }
        )
        mlflow.log_dict(json.loads(params.model_dump_json()), "retrain_params.json")
        metadata = {"dataset": index.dataset_hash, "snapshot": index.snapshot_hash, "parent": parent_version}
        with tempfile.TemporaryDirectory(prefix="wamfleet-policy-") as tmp:
            result = finetune(
                ctx.settings,
                index,
                Path(tmp) / "policy",
                config,
                parent_uri=parent_uri,
                mlflow_run_id=run.info.run_id,
                metadata=metadata,
                run_name=f"{pipeline_run}-finetune" if pipeline_run else None,
            )
            mlflow.log_metrics({"final_loss": result.final_loss, "samples_per_s": result.samples_per_s})
            target = Path(policy_path)
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(result.policy_dir, target)
        return str(run.info.run_id)


@step
def evaluate_step(index_key: str, policy_path: str, params_json: str) -> str:
    """Scores the candidate and the current champion on the same layouts; returns EvalReport JSON."""
    from mlflow import MlflowClient

    from wamfleet.pipelines.evaluate import evaluate_policy
    from wamfleet.pipelines.registry import configure_mlflow, find_version, model_uri
    from wamfleet.pipelines.shards import load_index
    from wamfleet.platform.contracts.embodiment import EmbodimentSpec
    from wamfleet.platform.contracts.lineage import CHAMPION
    from wamfleet.serving.predictor import resolve_policy

    ctx = context()
    params = parse_params(params_json)
    index = load_index(ctx.store, index_key)
    configure_mlflow(ctx.settings)
    name = ctx.settings.registered_model
    champion = find_version(MlflowClient(), name, CHAMPION)
    tasks = params.eval_tasks or _trained_tasks(index.tasks)
    unknown = [t for t in [*tasks, *params.heldout_tasks] if not _is_sim_task(t)]
    if unknown and params.eval_episodes:
        raise ValueError(f"eval_tasks: {unknown} are not Meta-World tasks the simulated fleet knows")
    spec = EmbodimentSpec.model_validate(next(iter(index.embodiments.values()))["spec"])
    report = evaluate_policy(
        ctx.store,
        index,
        Path(policy_path),
        "candidate",
        champion_dir=resolve_policy(model_uri(name, champion.version)) if champion is not None else None,
        champion_version=str(champion.version) if champion is not None else None,
        tasks=tasks,
        heldout_tasks=params.heldout_tasks,
        episodes=params.eval_episodes,
        seed=params.seed,
        max_steps=params.eval_max_steps,
        image_size=spec.cameras[0].width,
        margin=params.gate_margin,
        min_success=params.gate_min_success,
    )
    return report.model_dump_json()


def _trained_tasks(instructions: list[str]) -> list[str]:
    """Meta-World task names whose instructions the dataset holds (evaluation needs the env name)."""
    from wamfleet.fleet_agent.sim.tasks import INSTRUCTIONS

    by_text = {text: task for task, text in INSTRUCTIONS.items()}
    return sorted({by_text[i] for i in instructions if i in by_text})


def _is_sim_task(task: str) -> bool:
    from wamfleet.fleet_agent.sim.tasks import INSTRUCTIONS

    return task in INSTRUCTIONS


@dataclass(frozen=True)
class RegisterOutput:
    version: str
    candidate: bool


@step
def register_step(
    policy_path: str,
    mlflow_run_id: str,
    report_json: str,
    snapshot_hash: str,
    dataset_hash: str,
    parent_version: str,
    pipeline_run: str,
    retrain_run_id: str,
) -> RegisterOutput:
    from wamfleet.pipelines.curate import load_curated
    from wamfleet.pipelines.evaluate import EvalReport
    from wamfleet.pipelines.register import Lineage, register_policy
    from wamfleet.pipelines.registry import code_version, configure_mlflow

    ctx = context()
    configure_mlflow(ctx.settings)
    report = EvalReport.model_validate_json(report_json)
    recipe = load_curated(ctx.store, snapshot_hash, dataset_hash).recipe
    lineage = Lineage(
        snapshot_hash=snapshot_hash,
        dataset_hash=dataset_hash,
        parent_version=parent_version or None,
        code_version=code_version(),
        pipeline_run=pipeline_run or "local",
        retrain_run=retrain_run_id or None,
        failed_episodes=recipe.failed_episodes,
    )
    registered = register_policy(
        Path(policy_path), ctx.settings.registered_model, mlflow_run_id, report, lineage
    )
    if retrain_run_id:
        from wamfleet.platform.catalog.retrains import mark_finished

        with ctx.catalog.session() as session:
            mark_finished(
                session,
                retrain_run_id,
                succeeded=True,
                snapshot_hash=snapshot_hash,
                dataset_hash=dataset_hash,
                model_version=registered.version,
                candidate=registered.candidate,
            )
    return RegisterOutput(registered.version, registered.candidate)
