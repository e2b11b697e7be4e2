"""MLflow as the policy registry: where runs and versions go, aliases, lineage tag names.

Aliases: `candidate` (passed its evaluation gate), `champion` (what the fleet runs),
`previous` (the champion before; rollouts move these). Every version carries the lineage tags
below, so any served policy leads back to its data, its parent, its code and its pipeline run.
"""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from wamfleet.platform.settings import Settings

EXPERIMENT = "wamfleet-retrain"


def configure_mlflow(settings: Settings) -> str:
    """Points MLflow at the settings' tracking/registry URI; returns the retrain experiment id.

    With the embedded SQLite store, artifacts go to <data_dir>/mlartifacts (never the cwd)."""
    uri = settings.effective_mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        location = (settings.data_dir / "mlartifacts").resolve().as_uri()
    try:
        return str(mlflow.create_experiment(EXPERIMENT, artifact_location=location))
    except MlflowException:  # created concurrently by another component
        found = mlflow.get_experiment_by_name(EXPERIMENT)
        if found is None:
            raise
        return str(found.experiment_id)


def find_version(client: MlflowClient, name: str, ref: str | None) -> ModelVersion | None:
    """A version by alias or number; None when the alias (or the model) does not exist yet."""
    if ref is None or ref.lower() == "none" or not ref:
        return None
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            if ref.isdigit():
                raise ValueError(f"parent: version {ref} of {name!r} does not exist") from None
            return None
        raise


def model_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (or WAMFLEET_CODE_VERSION)."""
    explicit = os.environ.get("WAMFLEET_CODE_VERSION")
    if explicit:
        return explicit
    version = package_version("wamfleet")
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}" if sha else version
