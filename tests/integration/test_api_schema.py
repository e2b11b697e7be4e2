"""Schemathesis over the platform's own OpenAPI: no request may get a 5xx, and every response must
be what the schema declares (status, content type, body, headers), for an anonymous caller, a
robot and the admin.

The app runs in-process (ASGI) on a temporary SQLite catalog and local store, with one robot and
one committed episode, so the lists answer with real rows. Generation is seeded and derandomized:
a failure replays exactly. A handful of examples per operation and mode keeps it to seconds; the
routes that take no token (signed object URLs, health) run once, with more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN, frame_images
from tests.integration.api_support import settings_for
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.platform.api.app import create_app
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec, Outcome
from wamfleet.platform.contracts.retrain import RetrainRunInfo

# fuzzes every operation of the OpenAPI schema: half a minute; `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

# Examples per operation and generation mode (positive, negative), by identity. Without a token
# most routes answer 401 before looking at the request, so fewer suffice there.
EXAMPLES = {"anonymous": 4, "robot": 8, "admin": 8}
TOKENLESS_EXAMPLES = 30  # routes that ignore the token: signed object URLs, /healthz
TOKENLESS = ("/v1/objects/", "/healthz")
SEED = 20261203
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


class NoLauncher:
    """Records retrains without starting anything (the admin may POST /v1/retrains)."""

    backend: Literal["local", "kfp"] = "local"

    def launch(self, run: RetrainRunInfo) -> str | None:
        return None

    def poll(self) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class Platform:
    schema: Any
    identities: dict[str, dict[str, str]]


def _commit_one_episode(client: TestClient, robot: dict[str, str], spec: EmbodimentSpec, root: Path) -> None:
    with EpisodeWriter(root / "episode", robot_id="robot-1", embodiment=spec, task="stack the blocks") as w:
        for i in range(4):
            w.add_frame(frame_images(spec, i), np.zeros(spec.state_dim, np.float32), np.zeros(1, np.float32))
        manifest = w.close(Outcome(success=True, progress=1.0))
    opened = client.post(
        "/v1/uploads", json={"manifest": json.loads(manifest.model_dump_json())}, headers=robot
    )
    assert opened.status_code == 201, opened.text
    ticket = opened.json()
    for target in ticket["files"]:
        assert (
            client.put(
                target["url"], content=(w.directory / target["path"]).read_bytes(), headers=target["headers"]
            ).status_code
            == 200
        )
    committed = client.post(f"/v1/uploads/{ticket['session_id']}/commit", headers=robot)
    assert committed.status_code == 200, committed.text


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("schema")
    app = create_app(settings_for(root, f"sqlite:///{root / 'catalog.db'}"), launcher=NoLauncher())
    spec = EmbodimentSpec(
        name="test-arm",
        cameras=[CameraSpec(name="front", height=32, width=32)],
        fps=15,
        state_names=["j0"],
        action_names=["a0"],
    )
    with TestClient(app) as client:
        assert (
            client.post("/v1/embodiments", json=spec.model_dump(mode="json"), headers=ADMIN).status_code
            == 201
        )
        registered = client.post(
            "/v1/robots", json={"robot_id": "robot-1", "embodiment": "test-arm"}, headers=ADMIN
        )
        robot = {"Authorization": f"Bearer {registered.json()['token']}"}
        _commit_one_episode(client, robot, spec, root)
        config = schemathesis.Config.from_dict(
            {"seed": SEED, "generation": {"with-security-parameters": False, "deterministic": True}}
        )
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
        yield Platform(schema, {"anonymous": {}, "robot": robot, "admin": ADMIN})


def _run(operation: Any, mode: GenerationMode, headers: dict[str, str], examples: int) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


@pytest.mark.parametrize("identity", ["anonymous", "robot", "admin"])
def test_every_operation_answers_as_the_schema_declares(platform: Platform, identity: str) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in platform.schema.get_all_operations()]
    assert len(operations) > 25  # every router is in the schema
    for operation in operations:
        examples = EXAMPLES[identity]
        if operation.path.startswith(TOKENLESS):
            if identity != "anonymous":
                continue  # the token changes nothing there
            examples = TOKENLESS_EXAMPLES
        for mode in GenerationMode:
            try:
                _run(operation, mode, platform.identities[identity], examples)
            except Unsatisfiable:
                continue  # no invalid request exists (an operation without parameters)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all, report all
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, f"{len(failures)} operations failed as {identity}:\n\n" + "\n\n".join(failures)
