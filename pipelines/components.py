"""The Kubeflow Pipelines components: lightweight Python components, each a thin call into
`wamfleet.pipelines.steps` (usable without KFP too).

They run in the pipeline image (wamfleet installed, so no pip install at start); the Ray steps
(curate, finetune) reach the Ray cluster named by WAMFLEET_RAY_ADDRESS, a KubeRay head on a
cluster or a local Ray under kfp.local. (No `from __future__ import annotations` here: KFP reads
the annotations as types.)
"""

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

PIPELINE_IMAGE = os.environ.get("WAMFLEET_PIPELINE_IMAGE", "ghcr.io/wamfleet/wamfleet-pipeline:latest")


def _component(func):  # type: ignore[no-untyped-def]
    return dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)(func)


@_component
def snapshot(params_json: str) -> str:
    """Freezes the catalog's matching episodes into a content-addressed snapshot; returns its hash."""
    from wamfleet.pipelines.steps import snapshot_step

    return snapshot_step(params_json)


@_component
def validate(snapshot_hash: str) -> str:
    """Decode-checks new episodes; quarantines bad ones with a reason."""
    from wamfleet.pipelines.steps import validate_step

    return validate_step(snapshot_hash)


@_component
def curate(snapshot_hash: str, params_json: str, validation: str) -> str:
    """Ray Data quality filters, near-duplicate removal and diversity caps; returns the dataset hash."""
    from wamfleet.pipelines.steps import curate_step

    del validation  # orders this step after validation; the report itself is read from the store
    return curate_step(snapshot_hash, params_json)


@_component
def shards(snapshot_hash: str, dataset_hash: str, params_json: str) -> NamedTuple(  # type: ignore[valid-type]
    "ShardsOutputs", [("index_key", str), ("parent_version", str)]
):
    """Pre-encodes video latents and instruction embeddings into training shards."""
    from collections import namedtuple

    from wamfleet.pipelines.steps import shards_step

    out = shards_step(snapshot_hash, dataset_hash, params_json)
    outputs = namedtuple("outputs", ["index_key", "parent_version"])  # defined here: a component runs alone
    return outputs(out.index_key, out.parent_version)


@_component
def finetune(
    index_key: str, parent_version: str, params_json: str, pipeline_run: str, policy: Output[Model]
) -> str:
    """Ray Train data-parallel fine-tuning from the parent version; returns the MLflow run id."""
    from wamfleet.pipelines.steps import finetune_step

    run_id = finetune_step(index_key, parent_version, params_json, pipeline_run, policy.path)
    policy.metadata["mlflow_run_id"] = run_id
    return run_id


@_component
def evaluate(index_key: str, params_json: str, policy: Input[Model], metrics: Output[Metrics]) -> str:
    """Offline and closed-loop evaluation against the champion; returns the report JSON."""
    import json

    from wamfleet.pipelines.steps import evaluate_step

    report = evaluate_step(index_key, policy.path, params_json)
    for name, value in json.loads(report).get("candidate", {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(name, value)
    return report


@_component
def register(
    policy: Input[Model],
    mlflow_run_id: str,
    report_json: str,
    snapshot_hash: str,
    dataset_hash: str,
    parent_version: str,
    pipeline_run: str,
    retrain_run_id: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("candidate", bool)]):  # type: ignore[valid-type]
    """An MLflow model version with lineage tags; alias `candidate` only when the gate passed."""
    from collections import namedtuple

    from wamfleet.pipelines.steps import register_step

    out = register_step(
        policy.path,
        mlflow_run_id,
        report_json,
        snapshot_hash,
        dataset_hash,
        parent_version,
        pipeline_run,
        retrain_run_id,
    )
    outputs = namedtuple("outputs", ["version", "candidate"])
    return outputs(out.version, out.candidate)
