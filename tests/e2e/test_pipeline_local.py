"""`wamfleet retrain` under kfp.local when a component fails: the run records the error, the
command names it, and nothing is registered (so no `candidate` alias).

The successful path (every component, both retrains, every lineage tag, the catalog run and the
stored snapshot + curation) is checked end to end by tests/e2e/test_demo.py, which runs it twice.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import SecretStr

from tests.conftest import MakeMlflowStore
from wamfleet.fleet_agent.sim.fleet import FleetMode
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.retrains import list_runs
from wamfleet.platform.cli.fleet_cmd import simulate_fleet
from wamfleet.platform.entrypoint import WAMFLEET_CLI
from wamfleet.platform.settings import Settings, runner_env


@pytest.fixture(scope="module")
def fleet_data(tmp_path_factory: pytest.TempPathFactory, mlflow_store: MakeMlflowStore) -> Settings:
    data_dir = tmp_path_factory.mktemp("pipeline") / "data"
    token = secrets.token_urlsafe(16)
    settings = Settings(data_dir=data_dir, admin_token=SecretStr(token))
    # This module's copy of the migrated empty store, where effective_mlflow_uri points.
    assert mlflow_store(data_dir / "mlflow.db") == settings.effective_mlflow_uri
    with serve_in_thread(create_app(settings)) as api_url:
        simulate_fleet(
            api_url,
            token,
            robots=1,
            episodes=1,
            tasks=("reach-v3", "push-v3"),
            mode=FleetMode.diverse,
            spool_root=data_dir / "spool",
            image_size=64,
            max_steps=80,
        )
    return settings


def registry(settings: Settings) -> MlflowClient:
    """An explicit client: no global MLflow state leaks into other tests."""
    uri = settings.effective_mlflow_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _retrain(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = runner_env(settings) | {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [*WAMFLEET_CLI, "retrain", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=settings.data_dir)


def test_failing_component_surfaces_its_error_and_sets_no_alias(fleet_data: Settings, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"snapshot": {"embodiment": "no-such-robot"}}))
    result = _retrain(fleet_data, "--params-file", str(params))
    assert result.returncode == 1
    assert "no committed, unquarantined episode matches" in result.stderr
    assert registry(fleet_data).search_registered_models() == []  # nothing registered, so no alias either
    catalog = Catalog(fleet_data.effective_catalog_url)
    with catalog.session() as session:
        (run,) = list_runs(session)
        assert run.status == "failed"
        assert "no committed, unquarantined episode matches" in (run.error or "")
