"""What a retrain is asked to do: the parameters of the continuous fine-tuning pipeline.

The same model is the body of `POST /v1/retrains`, the options of `wamfleet retrain`, and the
pipeline's parameters, so a run recorded in the catalog can be re-run exactly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wamfleet.platform.contracts.curation import CurationRecipe
from wamfleet.platform.contracts.dataset import SnapshotQuery
from wamfleet.platform.contracts.limits import INT8_MAX, INT8_MIN, Text


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    snapshot: SnapshotQuery = Field(default_factory=SnapshotQuery)
    recipe: CurationRecipe = Field(default_factory=CurationRecipe)
    parent: str | None = Field(
        default="champion",
        description="MLflow alias or version number to resume from; none (or a missing alias): a new model",
    )
    preset: str = Field(default="tiny", description="model preset when training a new model")
    mode: Literal["lora", "full"] = "full"
    lora_rank: int = Field(default=4, ge=1, le=INT8_MAX)
    steps: int = Field(default=150, gt=0, le=INT8_MAX)
    batch_size: int = Field(default=8, gt=0, le=INT8_MAX)
    lr: float = Field(default=3e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine",
        description="after warmup: hold lr, or decay it along a cosine to lr / 10 at the last step",
    )
    curation_workers: int = Field(
        default=2, ge=0, le=INT8_MAX, description="Ray Data curation workers (0: in-process)"
    )
    workers: int = Field(default=1, ge=1, le=INT8_MAX, description="Ray Train data-parallel workers")
    threads_per_worker: int = Field(
        default=1, ge=1, le=INT8_MAX, description="CPUs each Ray Train worker reserves and trains on"
    )
    use_gpu: bool = False
    seed: int = Field(default=0, ge=INT8_MIN, le=INT8_MAX)
    eval_episodes: int = Field(
        default=2, ge=0, le=INT8_MAX, description="closed-loop episodes per task (0: offline only)"
    )
    eval_tasks: list[str] = Field(
        default_factory=list, description="Meta-World tasks; empty: the dataset's tasks"
    )
    heldout_tasks: list[str] = Field(
        default_factory=list, description="tasks never trained on, evaluated apart"
    )
    eval_max_steps: int = Field(default=150, gt=0, le=INT8_MAX)
    gate_margin: float = Field(
        default=0.1, ge=0, le=1, description="candidate if success >= champion success - margin"
    )
    gate_min_success: float = Field(
        default=0.0, ge=0, le=1, description="absolute floor on closed-loop success"
    )


class RetrainRequest(BaseModel):
    """Body of POST /v1/retrains."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reason: Text = Field(default="", max_length=500)
    params: RetrainParams = Field(default_factory=RetrainParams)
    force: bool = Field(default=False, description="start even if another retrain is queued or running")


RetrainStatus = Literal["queued", "running", "succeeded", "failed"]


class RetrainRunInfo(BaseModel):
    run_id: str
    status: RetrainStatus
    trigger: Literal["manual", "policy", "schedule"]
    reason: str
    requested_by: str
    backend: Literal["local", "kfp"]
    params: RetrainParams
    external_id: str | None = None
    snapshot_hash: str | None = None
    dataset_hash: str | None = None
    model_version: str | None = None
    candidate: bool | None = None
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
