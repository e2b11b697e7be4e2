"""A platform killed mid-rollout comes back in the same stage, with the same endpoints.

The platform runs as `wamfleet platform serve` in a subprocess and is SIGKILLed while a rollout
is in shadow; the restarted platform reads the rollout from the catalog, adopts the policy
servers that kept running (they live in their own sessions), and answers robots as before.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import MakeMlflowStore
from tests.unit.serving.policy_support import tiny_policy
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.contracts.rollout import RolloutConfig, StartRollout
from wamfleet.platform.entrypoint import WAMFLEET_CLI
from wamfleet.platform.net import free_port
from wamfleet.platform.rollouts.backends.local import LocalServingBackend
from wamfleet.platform.settings import Settings, runner_env
from wamfleet.serving.mlflow_model import log_policy

MODEL = "wamfleet-policy"


def register_versions(settings: Settings, root: Path, count: int) -> MlflowClient:
    uri = settings.effective_mlflow_uri
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.create_experiment("policies", artifact_location=(root / "artifacts").as_uri())
        for k in range(count):
            with mlflow.start_run(experiment_id=experiment):
                log_policy(tiny_policy(root / f"v{k + 1}", seed=k), registered_model_name=MODEL)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return client


class Platform:
    def __init__(self, settings: Settings, token: str, port: int) -> None:
        self.env = runner_env(settings) | {
            "WAMFLEET_ADMIN_TOKEN": token,
            "WAMFLEET_API_PORT": str(port),
            "WAMFLEET_ROLLOUT_CHECK_INTERVAL_S": "0.5",
            "OMP_NUM_THREADS": "1",
        }
        self.url = f"http://127.0.0.1:{port}"
        self.log = settings.data_dir / "platform.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        settings_dir = Path(self.env["WAMFLEET_DATA_DIR"])
        settings_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*WAMFLEET_CLI, "platform", "serve"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("the platform did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def setup(tmp_path: Path, mlflow_store: MakeMlflowStore) -> Iterator[tuple[Settings, str, MlflowClient]]:
    torch.set_num_threads(1)
    token = secrets.token_urlsafe(16)
    settings = Settings(data_dir=tmp_path / "data")
    # This test's copy of the migrated empty store, where effective_mlflow_uri points.
    assert mlflow_store(settings.data_dir / "mlflow.db") == settings.effective_mlflow_uri
    registry = register_versions(settings, tmp_path, 2)
    registry.set_registered_model_alias(MODEL, "champion", "1")
    yield settings, token, registry
    LocalServingBackend(settings, Catalog(settings.effective_catalog_url)).stop_all()


def test_platform_killed_mid_rollout_resumes_in_the_same_stage(
    setup: tuple[Settings, str, MlflowClient],
) -> None:
    settings, token, registry = setup
    platform = Platform(settings, token, free_port("127.0.0.1"))
    platform.start()
    try:
        admin = AdminClient(platform.url, token, timeout_s=120)
        admin.register_embodiment(sawyer_embodiment(96))
        robot = {"Authorization": f"Bearer {admin.robot_token('r0', 'sawyer-metaworld', site='sim')}"}
        config = RolloutConfig(shadow_min_episodes=1000)  # parks in shadow: no robot drives here
        info = admin.start_rollout(StartRollout(candidate="2", config=config))
        assert info.stage == "shadow"

        def assignment() -> dict[str, object]:
            deadline = time.monotonic() + 180
            while True:
                answer: dict[str, object] = httpx.get(
                    f"{platform.url}/v1/robots/me/policy", headers=robot
                ).json()
                if (answer["endpoint"] and answer["shadow"]) or time.monotonic() > deadline:
                    return answer
                time.sleep(0.5)

        before = assignment()
        assert before["rollout_id"] == info.rollout_id and before["stage"] == "shadow"
        assert before["version"] == f"{MODEL}/1" and before["shadow"]

        platform.kill()
        platform.start()
        resumed = admin.rollout(info.rollout_id)
        assert resumed.stage == "shadow" and [d.action for d in resumed.decisions] == ["start"]
        after = assignment()
        assert after == before  # same rollout, same stage, the very same (adopted) servers

        aborted = admin.rollout_action(info.rollout_id, "abort")
        assert aborted.stage == "aborted" and aborted.decisions[-1].actor == "admin"
        assert str(registry.get_model_version_by_alias(MODEL, "champion").version) == "1"
        with pytest.raises(mlflow.exceptions.MlflowException):
            registry.get_model_version_by_alias(MODEL, "candidate")
        admin.close()
    finally:
        if platform.proc is not None and platform.proc.poll() is None:
            platform.proc.terminate()
            platform.proc.wait(timeout=30)
