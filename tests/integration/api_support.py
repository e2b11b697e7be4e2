"""Driving the platform API in tests: an in-process client and the robot-side upload flow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.conftest import ADMIN, ADMIN_TOKEN
from wamfleet.platform.api.app import create_app
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.settings import Settings


class Api:
    def __init__(self, client: TestClient, app_settings: Settings) -> None:
        self.client = client
        self.settings = app_settings

    @property
    def state(self) -> Any:
        return self.client.app.state.platform  # type: ignore[attr-defined]

    def register_robot(self, robot_id: str, embodiment: str = "test-arm") -> dict[str, str]:
        response = self.client.post(
            "/v1/robots", json={"robot_id": robot_id, "embodiment": embodiment}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def open(self, robot: dict[str, str], manifest: EpisodeManifest) -> Any:
        return self.client.post(
            "/v1/uploads", json={"manifest": json.loads(manifest.model_dump_json())}, headers=robot
        )

    def put(self, url: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
        """A PUT as a robot sends it: with the headers its ticket names (the checksum)."""
        if url.startswith("http"):
            return httpx.put(url, content=data, headers=headers)  # S3: straight to the object store
        return self.client.put(url, content=data, headers=headers)

    def upload(self, robot: dict[str, str], directory: Path, manifest: EpisodeManifest) -> dict[str, Any]:
        """The whole robot flow: open, PUT every file, commit; returns the ticket."""
        response = self.open(robot, manifest)
        assert response.status_code == 201, response.text
        ticket: dict[str, Any] = response.json()
        for target in ticket["files"]:
            put = self.put(target["url"], (directory / target["path"]).read_bytes(), target["headers"])
            assert put.status_code == 200, put.text
        return ticket

    def commit(self, robot: dict[str, str], session_id: str) -> Any:
        return self.client.post(f"/v1/uploads/{session_id}/commit", headers=robot)


@contextmanager
def running_api(app_settings: Settings, embodiment: EmbodimentSpec) -> Iterator[Api]:
    with TestClient(create_app(app_settings)) as client:
        response = client.post("/v1/embodiments", json=embodiment.model_dump(mode="json"), headers=ADMIN)
        assert response.status_code == 201, response.text
        yield Api(client, app_settings)


def settings_for(tmp_path: Path, catalog_url: str, **overrides: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "platform",
        catalog_url=catalog_url,
        admin_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        **overrides,
    )
