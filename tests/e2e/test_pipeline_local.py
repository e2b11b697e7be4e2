"""The continuous fine-tuning pipeline end to end under kfp.local with a local Ray.

A simulated fleet uploads episodes through the platform API; `wamfleet retrain` runs every
component (snapshot, validate, curate on Ray Data, shards, finetune on Ray Train, evaluate in
closed loop, register) and yields an MLflow version carrying every lineage tag. A run whose
first component fails records its error and leaves no `candidate` alias.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import SecretStr

from wamfleet.fleet_agent.sim.fleet import FleetMode
from wamfleet.pipelines.registry import CANDIDATE, LINEAGE_TAGS, TAG_GATE, TAG_RETRAIN
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.retrains import list_runs
from wamfleet.platform.cli.fleet_cmd import simulate_fleet
from wamfleet.platform.settings import Settings, runner_env


@pytest.fixture(scope="module")
def fleet_data(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("pipeline") / "data"
    token = secrets.token_urlsafe(16)
    settings = Settings(data_dir=data_dir, admin_token=SecretStr(token))
    with serve_in_thread(create_app(settings)) as api_url:
        simulate_fleet(
            api_url,
            token,
            robots=2,
            episodes=3,
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
    cmd = [sys.executable, "-m", "wamfleet.platform.cli.main", "retrain", *args]
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


def test_retrain_registers_a_version_with_lineage(fleet_data: Settings, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(
        json.dumps(
            {
                "steps": 20,
                "eval_episodes": 1,
                "eval_max_steps": 40,
                "heldout_tasks": ["button-press-topdown-v3"],
            }
        )
    )
    result = _retrain(fleet_data, "--params-file", str(params))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "registered wamfleet-policy version 1, candidate" in result.stdout

    client = registry(fleet_data)
    version = client.get_model_version("wamfleet-policy", "1")
    for tag in LINEAGE_TAGS:
        assert version.tags.get(tag), f"version 1 lacks the lineage tag {tag}"
    assert version.tags["wamfleet.parent_version"] == "none"
    assert version.tags[TAG_GATE] == "passed"
    assert str(client.get_model_version_by_alias("wamfleet-policy", CANDIDATE).version) == "1"
    run = client.get_run(str(version.run_id))
    assert {"eval_success_rate", "eval_offline_action_mse", "final_loss", "train_loss"} <= set(
        run.data.metrics
    )
    assert run.data.params["steps"] == "20"

    catalog = Catalog(fleet_data.effective_catalog_url)
    with catalog.session() as session:
        latest = list_runs(session)[0]
    assert latest.status == "succeeded"
    assert latest.model_version == "1" and latest.candidate is True
    assert version.tags[TAG_RETRAIN] == latest.run_id
    assert latest.snapshot_hash == version.tags["wamfleet.snapshot"]
    # The snapshot and its curation report are stored under the snapshot hash.
    objects = fleet_data.data_dir / "objects" / "datasets" / latest.snapshot_hash
    assert (objects / "snapshot.json").exists() and (objects / "validation.json").exists()
    assert list((objects / "curated").glob("*.json"))
