"""A policy logged to MLflow and aliased is what `models:/<name>@<alias>` serves."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import MakeMlflowStore
from tests.unit.serving.policy_support import tiny_policy
from wamfleet.serving.mlflow_model import log_policy
from wamfleet.serving.predictor import WAMPredictor, resolve_policy

torch.set_num_threads(1)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store: MakeMlflowStore) -> str:
    """A SQLite MLflow store for this test only (a copy of the migrated empty one), reached through
    the environment, not global state."""
    uri = mlflow_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    artifacts = (tmp_path / "artifacts").as_uri()  # not ./mlruns in the working directory
    mlflow.set_experiment(
        experiment_id=MlflowClient().create_experiment("policies", artifact_location=artifacts)
    )
    return uri


def test_registered_policy_resolves_by_alias_and_version(registry: str, tmp_path: Path) -> None:
    policy = tiny_policy(tmp_path / "policy")
    with mlflow.start_run():
        info = log_policy(policy, registered_model_name="wam")
    MlflowClient().set_registered_model_alias("wam", "champion", str(info.registered_model_version))
    # Requirements are named, not inferred by loading the model once more.
    version_uri = f"models:/wam/{info.registered_model_version}"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(version_uri)).read_text()
    assert "wamfleet==" in requirements and f"torch=={torch.__version__.split('+')[0]}" in requirements
    for uri in ("models:/wam@champion", f"models:/wam/{info.registered_model_version}"):
        resolved = resolve_policy(uri)
        assert (resolved / "policy.json").read_bytes() == (policy / "policy.json").read_bytes()

    predictor = WAMPredictor("wam", "models:/wam@champion")
    assert predictor.load() and predictor.ready
    assert predictor.engine is not None
    assert predictor.engine.metadata().action_dim == 4
    predictor.engine.close()

    loaded = mlflow.pyfunc.load_model("models:/wam@champion")
    actions = loaded.predict(
        {"images": np.zeros((2, 96, 96, 3), np.uint8), "state": np.zeros(39), "instruction": "reach"}
    )
    assert np.asarray(actions).shape == (8, 4)


def test_unknown_alias_and_non_policy_artifacts_are_refused(registry: str, tmp_path: Path) -> None:
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "notes/readme.txt")
    with pytest.raises(ValueError, match=r"holds no policy\.json"):
        resolve_policy(f"runs:/{run.info.run_id}/notes")
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing not found"):
        resolve_policy("models:/missing@champion")
