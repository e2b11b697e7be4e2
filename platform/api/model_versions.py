"""The registered model's versions as the dashboard shows them: aliases, run metrics, lineage tags,
and links into the MLflow UI (when WAMFLEET_MLFLOW_UI_URL names one)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from wamfleet.platform.contracts.dashboard import ModelsView, ModelVersionView
from wamfleet.platform.contracts.lineage import LINEAGE_PREFIX

log = logging.getLogger(__name__)
MAX_VERSIONS = 200


def _ui(base: str | None, fragment: str) -> str | None:
    return f"{base.rstrip('/')}/#/{fragment}" if base else None


def _aliases(client: Any, model_name: str) -> dict[str, list[str]]:
    """Version -> its aliases, from the registered model: search_model_versions leaves every
    version's `aliases` empty (MLflow's SQL store fills them only in get_model_version)."""
    from mlflow.exceptions import MlflowException

    try:
        by_alias = client.get_registered_model(model_name).aliases or {}
    except MlflowException as exc:
        log.warning("aliases of %s: %s", model_name, exc.message)
        return {}
    out: dict[str, list[str]] = {}
    for alias, version in by_alias.items():
        out.setdefault(str(version), []).append(alias)
    return out


def describe_versions(client: Any, model_name: str, ui_url: str | None) -> ModelsView:
    """Newest first; a registry that cannot be read is an `error` on the view, not a failed page."""
    from mlflow.exceptions import MlflowException

    view = ModelsView(model_name=model_name, mlflow_ui_url=ui_url)
    try:
        found = client.search_model_versions(
            f"name = '{model_name}'", max_results=MAX_VERSIONS, order_by=["version_number DESC"]
        )
    except MlflowException as exc:  # an unreachable server too, once MLflow's retries give up
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return view
        log.warning("reading the model registry failed: %s", exc.message)
        view.error = f"MLflow: {exc.message}"
        return view
    except Exception as exc:  # noqa: BLE001 - e.g. its SQLite store busy or still being created
        log.warning("reading the model registry failed: %s: %s", type(exc).__name__, exc)
        view.error = f"MLflow: the registry could not be read ({type(exc).__name__})"
        return view
    aliases = _aliases(client, model_name) if found else {}
    for mv in found:
        version = str(mv.version)
        row = ModelVersionView(
            version=version,
            aliases=sorted(aliases.get(version, [])),
            created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
            if mv.creation_timestamp
            else None,
            run_id=mv.run_id,
            status=mv.status,
            lineage={k: v for k, v in (mv.tags or {}).items() if k.startswith(LINEAGE_PREFIX)},
            mlflow_version_url=_ui(ui_url, f"models/{quote(model_name)}/versions/{version}"),
        )
        if mv.run_id:
            try:
                run = client.get_run(mv.run_id)
            except MlflowException as exc:
                log.warning("run %s of version %s: %s", mv.run_id, version, exc.message)
            else:
                row.metrics = dict(run.data.metrics)
                row.mlflow_run_url = _ui(ui_url, f"experiments/{run.info.experiment_id}/runs/{mv.run_id}")
        view.versions.append(row)
    return view
