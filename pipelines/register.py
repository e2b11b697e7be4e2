"""Register a trained policy as an MLflow model version with its lineage; gate the `candidate` alias.

The version is logged into the fine-tuning run (params and training curves are already there),
with the evaluation metrics, the embodiment specs and norm stats as an artifact, and tags for
the snapshot, the curated dataset, the parent version, the code version and the pipeline run.
The `candidate` alias moves last, and only when the gate passed: a run that failed anywhere
earlier, or whose gate failed, leaves the alias where it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from wamfleet.pipelines.evaluate import EvalReport
from wamfleet.platform.contracts.lineage import (
    CANDIDATE,
    TAG_CODE,
    TAG_DATASET,
    TAG_FAILED_EPISODES,
    TAG_GATE,
    TAG_PARENT,
    TAG_PIPELINE_RUN,
    TAG_RETRAIN,
    TAG_SNAPSHOT,
)


@dataclass(frozen=True)
class Lineage:
    snapshot_hash: str
    dataset_hash: str
    parent_version: str | None
    code_version: str
    pipeline_run: str
    retrain_run: str | None = None
    failed_episodes: str | None = None  # the curation recipe's rule, when the dataset is known

    def tags(self) -> dict[str, str]:
        tags = {
            TAG_SNAPSHOT: self.snapshot_hash,
            TAG_DATASET: self.dataset_hash,
            TAG_PARENT: self.parent_version or "none",
            TAG_CODE: self.code_version,
            TAG_PIPELINE_RUN: self.pipeline_run,
        }
        if self.retrain_run:
            tags[TAG_RETRAIN] = self.retrain_run
        if self.failed_episodes:
            tags[TAG_FAILED_EPISODES] = self.failed_episodes
        return tags


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    candidate: bool
    run_id: str


def register_policy(
    policy_dir: Path,
    name: str,
    mlflow_run_id: str,
    report: EvalReport,
    lineage: Lineage,
) -> Registered:
    from wamfleet.serving.mlflow_model import log_policy

    client = MlflowClient()
    embodiments = json.loads((Path(policy_dir) / "transformer" / "embodiments.json").read_text())
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics(report.metrics())
        mlflow.log_dict(json.loads(report.model_dump_json()), "evaluation.json")
        mlflow.log_dict(embodiments, "embodiments.json")
        mlflow.set_tags(lineage.tags())
        info = log_policy(Path(policy_dir), registered_model_name=name)
    version = str(info.registered_model_version)
    for key, value in lineage.tags().items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, TAG_GATE, "passed" if report.gate.passed else "failed")
    client.update_model_version(name, version, description=f"gate: {report.gate.reason}")
    if report.gate.passed:
        client.set_registered_model_alias(name, CANDIDATE, version)
    return Registered(name=name, version=version, candidate=report.gate.passed, run_id=mlflow_run_id)
