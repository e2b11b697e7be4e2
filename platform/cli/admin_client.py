"""Admin calls to the platform API that the CLI makes (robots, episodes, rollouts, dashboard views)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from wamfleet.platform.contracts.dashboard import DatasetView, ModelsView, RolloutView
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.episode import MANIFEST_FILE
from wamfleet.platform.contracts.ingest import (
    EpisodeDownload,
    EpisodePage,
    EpisodeSummary,
    RobotRegistration,
    RobotToken,
)
from wamfleet.platform.contracts.retrain import RetrainRunInfo
from wamfleet.platform.contracts.rollout import RolloutInfo, StartRollout


class AdminClient:
    def __init__(self, api_url: str, admin_token: str, timeout_s: float = 30.0) -> None:
        self.token = admin_token
        self._http = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path}: "
                f"HTTP {response.status_code} {response.text[:500]}"
            )
        return response

    def register_embodiment(self, spec: EmbodimentSpec) -> None:
        self._check(self._http.post("/v1/embodiments", json=spec.model_dump(mode="json")))

    def robot_token(self, robot_id: str, embodiment: str, site: str | None = None) -> str:
        """Registers the robot, or rotates its token if it exists; returns the new token."""
        body = RobotRegistration(robot_id=robot_id, embodiment=embodiment, site=site).model_dump(mode="json")
        response = self._http.post("/v1/robots", json=body)
        if response.status_code == 409:
            response = self._http.post(f"/v1/robots/{robot_id}/token")
        return RobotToken.model_validate(self._check(response).json()).token

    def episodes(self, **params: object) -> EpisodePage:
        query = {k: v for k, v in params.items() if v is not None}
        return EpisodePage.model_validate(self._check(self._http.get("/v1/episodes", params=query)).json())  # type: ignore[arg-type]

    def all_episodes(self) -> list[EpisodeSummary]:
        items: list[EpisodeSummary] = []
        cursor: str | None = None
        while True:
            page = self.episodes(limit=1000, cursor=cursor)
            items.extend(page.items)
            if page.next_cursor is None:
                return items
            cursor = page.next_cursor

    def download_episode(self, episode_id: uuid.UUID | str, dest: Path) -> EpisodeDownload:
        """Fetches an episode's files through its signed download URLs into `dest`."""
        links = EpisodeDownload.model_validate(
            self._check(self._http.get(f"/v1/episodes/{episode_id}/download")).json()
        )
        dest.mkdir(parents=True, exist_ok=True)
        with httpx.Client(base_url=self._http.base_url, timeout=self._http.timeout) as plain:
            for path, url in [(f.path, f.url) for f in links.files] + [(MANIFEST_FILE, links.manifest_url)]:
                target = dest / path
                target.parent.mkdir(parents=True, exist_ok=True)
                with plain.stream("GET", url) as response:
                    self._check(response)
                    with open(target, "wb") as f:
                        for chunk in response.iter_bytes(1 << 20):
                            f.write(chunk)
        return links

    def start_rollout(self, request: StartRollout) -> RolloutInfo:
        body = request.model_dump(mode="json")
        return RolloutInfo.model_validate(self._check(self._http.post("/v1/rollouts", json=body)).json())

    def rollouts(self) -> list[RolloutInfo]:
        return [RolloutInfo.model_validate(r) for r in self._check(self._http.get("/v1/rollouts")).json()]

    def rollout(self, rollout_id: str) -> RolloutInfo:
        return RolloutInfo.model_validate(self._check(self._http.get(f"/v1/rollouts/{rollout_id}")).json())

    def rollout_action(self, rollout_id: str, action: str) -> RolloutInfo:
        response = self._http.post(f"/v1/rollouts/{rollout_id}/{action}")
        return RolloutInfo.model_validate(self._check(response).json())

    def retrain_runs(self) -> list[RetrainRunInfo]:
        return [RetrainRunInfo.model_validate(r) for r in self._check(self._http.get("/v1/retrains")).json()]

    def datasets(self) -> list[DatasetView]:
        response = self._check(self._http.get("/v1/dashboard/datasets"))
        return [DatasetView.model_validate(d) for d in response.json()]

    def model_versions(self) -> ModelsView:
        return ModelsView.model_validate(self._check(self._http.get("/v1/dashboard/models")).json())

    def rollout_views(self) -> list[RolloutView]:
        response = self._check(self._http.get("/v1/dashboard/rollouts", params={"limit": 200}))
        return [RolloutView.model_validate(r) for r in response.json()]
