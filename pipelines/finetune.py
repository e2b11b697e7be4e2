"""Fine-tuning on Ray Train: data-parallel workers step the model's Trainer over training shards.

Each worker downloads the shards (tensors only), keeps every world-th window, builds the model
(the parent policy's weights, or a new model from the shards' config), optionally injects LoRA,
and steps a DDP-wrapped FlowMatchingObjective (`ray.train.torch.prepare_model`). Rank 0 logs to
the MLflow run and reports the finished policy directory as the Ray Train checkpoint, which the
driver copies out. On KubeRay the same code runs with `ray_address` pointing at the cluster and
checkpoints going to the object store.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from wamfleet.model.lora import apply_lora, merge_lora
from wamfleet.model.objective import FlowMatchingObjective
from wamfleet.model.policy import save_policy
from wamfleet.model.trainer import Trainer, TrainerConfig
from wamfleet.model.transformer import WorldActionModel
from wamfleet.pipelines.shards import ShardIndex, fetch_codec, fetch_shards
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.factory import open_object_store


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: str = Field(default="full", pattern="^(lora|full)$")
    lora_rank: int = Field(default=4, ge=1)
    steps: int = Field(default=150, gt=0)
    batch_size: int = Field(default=8, gt=0, description="per worker")
    lr: float = Field(default=3e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    seed: int = 0
    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    threads_per_worker: int = Field(default=1, ge=1)
    log_every: int = Field(default=10, ge=1)


@dataclass
class FinetuneResult:
    policy_dir: Path
    steps: int
    final_loss: float
    samples_per_s: float
    losses: list[float] = field(default_factory=list)


def _build_model(index: ShardIndex, parent_uri: str | None, seed: int) -> WorldActionModel:
    if parent_uri:
        from wamfleet.model.policy import load_policy
        from wamfleet.serving.predictor import resolve_policy

        return load_policy(resolve_policy(parent_uri)).model
    from wamfleet.model.config import WAMConfig

    torch.manual_seed(seed)  # every worker starts from the same weights (DDP broadcasts rank 0's anyway)
    return WorldActionModel(WAMConfig.model_validate(index.config))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point (also what one local worker runs)."""
    import mlflow
    import ray.train
    import ray.train.torch
    from mlflow.entities import Metric

    cfg = FinetuneConfig.model_validate(loop_config["finetune"])
    settings = Settings.model_validate(loop_config["settings"])
    index = ShardIndex.model_validate(loop_config["index"])
    torch.set_num_threads(cfg.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    store = open_object_store(settings)
    mlflow.set_tracking_uri(settings.effective_mlflow_uri)
    client = mlflow.MlflowClient() if rank == 0 and loop_config.get("mlflow_run_id") else None

    with tempfile.TemporaryDirectory(prefix="wamfleet-finetune-") as tmp:
        data = fetch_shards(store, index, Path(tmp) / "shards", "train").subset(rank, world)
        if len(data) == 0:
            raise ValueError(f"worker {rank}: no training window (dataset has {index.windows('train')})")
        model = _build_model(index, loop_config.get("parent_uri"), cfg.seed)
        if cfg.mode == "lora":
            apply_lora(model, rank=cfg.lora_rank)
        device = ray.train.torch.get_device()
        objective = ray.train.torch.prepare_model(
            FlowMatchingObjective(model), parallel_strategy_kwargs={"find_unused_parameters": True}
        )
        trainer = Trainer(
            model,
            TrainerConfig(
                lr=cfg.lr,
                warmup_steps=min(20, cfg.steps // 5),
                schedule=cfg.lr_schedule,
                decay_steps=cfg.steps,
                seed=cfg.seed + rank,
            ),
            device=str(device),
            objective=objective,
        )
        picker = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        losses: list[float] = []
        started = time.perf_counter()
        pending: list[Metric] = []
        for step in range(cfg.steps):
            rows = torch.randperm(len(data), generator=picker)[: cfg.batch_size]
            metrics = trainer.step([data.batch(rows)])
            losses.append(metrics.loss)
            if client is not None:
                now_ms = int(time.time() * 1000)
                pending += [
                    Metric("train_loss", metrics.loss, now_ms, step + 1),
                    Metric("train_video_loss", metrics.video_loss, now_ms, step + 1),
                    Metric("train_action_loss", metrics.action_loss, now_ms, step + 1),
                ]
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    client.log_batch(loop_config["mlflow_run_id"], metrics=pending)
                    pending = []
        elapsed = time.perf_counter() - started
        report = {
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "samples_per_s": cfg.steps * min(cfg.batch_size, len(data)) * world / elapsed,
            "steps": cfg.steps,
            "losses": losses,
        }
        if rank != 0:
            ray.train.report(report)
            return
        trained = merge_lora(model) if cfg.mode == "lora" else model
        policy_dir = Path(tmp) / "policy"
        save_policy(
            policy_dir,
            trained.cpu().eval(),
            fetch_codec(store, index, Path(tmp)),
            embodiments=index.embodiments,
            metadata=dict(loop_config.get("metadata") or {}),
        )
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(policy_dir)))


def _storage(settings: Settings) -> tuple[str, Any]:
    """Where Ray Train keeps checkpoints: a local dir, or the bucket when the store is S3."""
    if settings.storage_backend == "local":
        return str((settings.data_dir / "ray-results").resolve()), None
    import pyarrow.fs

    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    fs = pyarrow.fs.S3FileSystem(
        access_key=settings.s3_access_key,
        secret_key=secret,
        endpoint_override=settings.s3_endpoint,
        scheme="https" if settings.s3_secure else "http",
        region=settings.s3_region or "us-east-1",
    )
    return f"{settings.s3_bucket}/ray-results", fs


def finetune(
    settings: Settings,
    index: ShardIndex,
    out_dir: Path,
    config: FinetuneConfig,
    *,
    parent_uri: str | None = None,
    mlflow_run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    run_name: str | None = None,
) -> FinetuneResult:
    """Runs the Ray Train job (on the Ray cluster `settings.ray_address`, or a local Ray)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from wamfleet.pipelines.ray_runtime import ensure_ray

    ensure_ray(settings.ray_address)
    storage_path, storage_fs = _storage(settings)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "finetune": config.model_dump(),
            "settings": settings.model_dump(mode="json") | _secrets(settings),
            "index": index.model_dump(mode="json"),
            "parent_uri": parent_uri,
            "mlflow_run_id": mlflow_run_id,
            "metadata": metadata or {},
        },
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.threads_per_worker} | ({"GPU": 1} if config.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=run_name or f"finetune-{index.dataset_hash[:12]}-{int(time.time())}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("finetune: the training job reported no checkpoint")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(directory, out_dir)
    metrics = result.metrics or {}
    return FinetuneResult(
        policy_dir=out_dir,
        steps=int(metrics.get("steps", config.steps)),
        final_loss=float(metrics.get("final_loss", float("nan"))),
        samples_per_s=float(metrics.get("samples_per_s", float("nan"))),
        losses=list(metrics.get("losses", [])),
    )


def _secrets(settings: Settings) -> dict[str, Any]:
    """model_dump masks SecretStr; workers need the real values to reach the store."""
    out: dict[str, Any] = {}
    if settings.s3_secret_key is not None:
        out["s3_secret_key"] = settings.s3_secret_key.get_secret_value()
    if settings.admin_token is not None:
        out["admin_token"] = None
    return out
