"""`continuous_finetune`: the Kubeflow pipeline from the fleet's raw episodes to a registered version.

snapshot -> validate -> curate -> shards -> finetune -> evaluate -> register. Settings reach
every step as WAMFLEET_* environment variables: on a cluster from the `wamfleet-pipelines`
Secret (credentials, URLs) and ConfigMap (everything else) that the Helm chart creates; under
kfp.local from the caller's environment. No step is cached: each run must see the catalog now.
"""

from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl, kubernetes

from wamfleet.pipelines import components as c

PIPELINE_NAME = "continuous-finetune"
# The pipeline's tasks in the order they run (each task's name is its component's).
STEPS = ("snapshot", "validate", "curate", "shards", "finetune", "evaluate", "register")
SETTINGS_SECRET = "wamfleet-pipelines"
SETTINGS_CONFIG_MAP = "wamfleet-pipelines"
SECRET_ENV = (
    "WAMFLEET_CATALOG_URL",
    "WAMFLEET_S3_ACCESS_KEY",
    "WAMFLEET_S3_SECRET_KEY",
    "WAMFLEET_MLFLOW_TRACKING_URI",
)
CONFIG_ENV = (
    "WAMFLEET_STORAGE_BACKEND",
    "WAMFLEET_S3_ENDPOINT",
    "WAMFLEET_S3_SECURE",
    "WAMFLEET_S3_BUCKET",
    "WAMFLEET_REGISTERED_MODEL",
    "WAMFLEET_RAY_ADDRESS",
)


class PipelineOutputs(NamedTuple):
    version: str
    candidate: bool


def _configure(task: Any, name: str) -> Any:
    task.set_display_name(name)
    task.set_caching_options(False)
    kubernetes.use_secret_as_env(
        task, secret_name=SETTINGS_SECRET, secret_key_to_env={k: k for k in SECRET_ENV}
    )
    kubernetes.use_config_map_as_env(
        task, config_map_name=SETTINGS_CONFIG_MAP, config_map_key_to_env={k: k for k in CONFIG_ENV}
    )
    return task


@dsl.pipeline(
    name=PIPELINE_NAME, description="Curate the fleet's episodes, fine-tune the WAM, evaluate, register."
)
def continuous_finetune(params_json: str = "{}", retrain_run_id: str = "") -> PipelineOutputs:
    run = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    snap = _configure(c.snapshot(params_json=params_json), "snapshot")
    checked = _configure(c.validate(snapshot_hash=snap.output), "validate")
    curated = _configure(
        c.curate(snapshot_hash=snap.output, params_json=params_json, validation=checked.output), "curate"
    )
    shard = _configure(
        c.shards(snapshot_hash=snap.output, dataset_hash=curated.output, params_json=params_json), "shards"
    )
    tuned = _configure(
        c.finetune(
            index_key=shard.outputs["index_key"],
            parent_version=shard.outputs["parent_version"],
            params_json=params_json,
            pipeline_run=run,
        ),
        "finetune",
    )
    scored = _configure(
        c.evaluate(
            index_key=shard.outputs["index_key"], params_json=params_json, policy=tuned.outputs["policy"]
        ),
        "evaluate",
    )
    registered = _configure(
        c.register(
            policy=tuned.outputs["policy"],
            mlflow_run_id=tuned.outputs["Output"],
            report_json=scored.outputs["Output"],
            snapshot_hash=snap.output,
            dataset_hash=curated.output,
            parent_version=shard.outputs["parent_version"],
            pipeline_run=run,
            retrain_run_id=retrain_run_id,
        ),
        "register",
    )
    return PipelineOutputs(registered.outputs["version"], registered.outputs["candidate"])


def compile_pipeline(path: Path) -> Path:
    """Writes the pipeline's IR YAML (what Kubeflow Pipelines uploads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(continuous_finetune, str(path), pipeline_name=PIPELINE_NAME)
    return path
