"""Policies in the MLflow registry: an MLflow pyfunc model that carries the policy directory.

`log_policy` logs a policy directory as the artifact of a pyfunc model (optionally registering
a version); `wamfleet serve --policy models:/<name>@<alias>` downloads it again. Loaded with
`mlflow.pyfunc.load_model`, it answers one observation dict with an action chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow.models.model import ModelInfo

POLICY_ARTIFACT = "policy"


class PolicyPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """pyfunc wrapper: predict({"images", "state", "instruction", "session_id"}) -> actions."""

    def load_context(self, context: Any) -> None:
        from wamfleet.model.policy import load_policy
        from wamfleet.serving.engine import PolicyEngine

        policy = load_policy(context.artifacts[POLICY_ARTIFACT])
        self.engine = PolicyEngine(policy, version=str(policy.metadata.get("version", policy.sha256[:12])))

    def predict(self, context: Any, model_input: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
        from wamfleet.serving.engine import InferRequest

        result = self.engine.infer(
            InferRequest(
                session_id=str(model_input.get("session_id", "pyfunc")),
                instruction=str(model_input["instruction"]),
                images=np.asarray(model_input["images"], dtype=np.uint8),
                state=np.asarray(model_input["state"], dtype=np.float32),
            )
        )
        return result.actions


def policy_requirements() -> list[str]:
    """What loading the model needs: wamfleet (which pins the rest) and the torch it was saved with.

    Named explicitly: left to infer them, MLflow downloads and loads the model in a subprocess
    (about 10 s of every registration on two cores) to find the same answer."""
    from importlib.metadata import version

    import torch

    return [f"wamfleet=={version('wamfleet')}", f"torch=={torch.__version__.split('+')[0]}"]


def log_policy(policy_dir: Path, registered_model_name: str | None = None) -> ModelInfo:
    """Logs the policy into the active run (as an MLflow model); registers a version if named."""
    info: ModelInfo = mlflow.pyfunc.log_model(
        name=POLICY_ARTIFACT,
        python_model=PolicyPyfunc(),
        artifacts={POLICY_ARTIFACT: str(policy_dir)},
        registered_model_name=registered_model_name,
        pip_requirements=policy_requirements(),
    )
    return info
