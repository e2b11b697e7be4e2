"""Every bad request gets a 4xx naming the field, never a 500: naive times, numbers beyond the
catalog's columns, NaN literals, trailing newlines and NUL characters, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN, WriteEpisode
from tests.integration.api_support import Api, running_api, settings_for
from wamfleet.platform.contracts import EmbodimentSpec


@pytest.fixture
def api(tmp_path: Path, catalog_url: str, embodiment: EmbodimentSpec) -> Iterator[Api]:
    with running_api(settings_for(tmp_path, catalog_url), embodiment) as api:
        yield api


def _locs(response: Any) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


def test_naive_since_and_until_are_read_as_utc(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=2, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)
    assert api.commit(robot, ticket["session_id"]).status_code == 200
    started = manifest.started_at.astimezone(UTC).replace(tzinfo=None)  # naive, in UTC
    before = (started - timedelta(seconds=1)).isoformat()
    after = (started + timedelta(seconds=1)).isoformat()
    for path, headers in (
        ("/v1/episodes", ADMIN),
        ("/v1/dashboard/episodes", {}),
    ):  # the dashboard anonymously
        for params, found in (({"since": before}, 1), ({"since": after}, 0), ({"until": after}, 1)):
            if "until" in params and path.startswith("/v1/dashboard"):
                continue  # the dashboard filters by `since` only
            response = api.client.get(path, params=params, headers=headers)
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == found, (path, params)
    out_of_range = api.client.get(
        "/v1/episodes", params={"since": "0001-01-01T00:00:00+05:00"}, headers=ADMIN
    )
    assert _locs(out_of_range) == [["query", "since"]]
    spec = api.client.get("/openapi.json").json()
    (since,) = [p for p in spec["paths"]["/v1/episodes"]["get"]["parameters"] if p["name"] == "since"]
    assert "taken as UTC" in since["description"]


@pytest.mark.parametrize("version", [2**31, 2**63, 10**30])
def test_embodiment_versions_beyond_the_catalogs_integer_are_refused(
    api: Api, embodiment: EmbodimentSpec, write_episode: WriteEpisode, version: int
) -> None:
    query = api.client.get("/v1/embodiments/test-arm", params={"version": version}, headers=ADMIN)
    assert _locs(query) == [["query", "version"]]
    body = embodiment.model_dump(mode="json") | {"version": version}
    assert _locs(api.client.post("/v1/embodiments", json=body, headers=ADMIN)) == [["body", "version"]]
    robot = api.register_robot(f"robot-{version % 97}")
    _, manifest = write_episode(frames=2, robot_id=f"robot-{version % 97}")
    raw = json.loads(manifest.model_dump_json())
    raw["embodiment"]["version"] = version
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)
    assert _locs(response) == [["body", "manifest", "embodiment", "version"]]


def test_manifest_numbers_beyond_the_catalog_columns_are_refused_at_open(
    api: Api, write_episode: WriteEpisode
) -> None:
    """2^63 frames used to be accepted (201), published at commit, then fail the catalog insert."""
    robot = api.register_robot("robot-1")
    _, manifest = write_episode(frames=2, robot_id="robot-1")
    for field, value in (("num_frames", 2**63), ("num_frames", 2**31), ("interventions", 2**31)):
        raw = json.loads(manifest.model_dump_json())
        if field == "interventions":
            raw["outcome"]["interventions"] = value
            loc = ["body", "manifest", "outcome", "interventions"]
        else:
            raw[field] = value
            loc = ["body", "manifest", field]
        assert _locs(api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)) == [loc]
    assert api.client.get("/v1/episodes", headers=ADMIN).json()["items"] == []


def test_nan_and_infinity_literals_get_a_422_naming_the_field(
    api: Api, embodiment: EmbodimentSpec, write_episode: WriteEpisode
) -> None:
    body = json.dumps(embodiment.model_dump(mode="json") | {"version": 2}).replace(
        '"fps": 15.0', '"fps": NaN'
    )
    assert "NaN" in body
    response = api.client.post(
        "/v1/embodiments", content=body, headers=ADMIN | {"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "fps"] and error["input"] == "nan"

    robot = api.register_robot("robot-1")
    _, manifest = write_episode(frames=2, robot_id="robot-1")
    raw = manifest.model_dump_json().replace('"progress":1.0', '"progress":Infinity')
    assert "Infinity" in raw
    response = api.client.post(
        "/v1/uploads",
        content=f'{{"manifest": {raw}}}',
        headers=robot | {"Content-Type": "application/json"},
    )
    assert _locs(response) == [["body", "manifest", "outcome", "progress"]]
    assert response.json()["detail"][0]["input"] == "inf"

    rollout = api.client.post(
        "/v1/rollouts",
        content='{"config": {"latency_p95_budget_ms": Infinity}}',
        headers=ADMIN | {"Content-Type": "application/json"},
    )
    assert _locs(rollout) == [["body", "config", "latency_p95_budget_ms"]]


def test_trailing_newlines_and_nul_characters_are_refused_naming_the_field(
    api: Api, write_episode: WriteEpisode
) -> None:
    """On PostgreSQL a NUL in any text reaching a query was a 500; a newline after a tag key
    passed the slug check."""
    robot = api.register_robot("robot-1")
    _, manifest = write_episode(frames=2, robot_id="robot-1")
    for tags in ({"shift\n": "night"}, {"shift": "ni\x00ght"}):
        raw = json.loads(manifest.model_dump_json()) | {"tags": tags}
        response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)
        assert _locs(response) == [["body", "manifest", "tags"]]
    raw = json.loads(manifest.model_dump_json()) | {"task": "stack\x00"}
    assert _locs(api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)) == [
        ["body", "manifest", "task"]
    ]
    for params, loc in (
        ({"task": "st\x00ack"}, ["query", "task"]),
        ({"tag": "shift=ni\x00ght"}, ["query", "tag", 0]),
    ):
        assert _locs(api.client.get("/v1/episodes", params=params, headers=ADMIN)) == [loc]
    tag = api.client.get("/v1/episodes", params={"tag": "shift\n=night"}, headers=ADMIN)
    assert tag.status_code == 422 and tag.json()["detail"].startswith("tag:")
    assert _locs(api.client.get("/v1/robots/robot-1%00", headers=ADMIN)) == [["path", "robot_id"]]
    assert _locs(api.client.get("/v1/dashboard/episodes", params={"policy_version": "1\x00"})) == [
        ["query", "policy_version"]
    ]
    registration = {"robot_id": "robot-2", "embodiment": "test-arm", "description": "a\x00b"}
    assert _locs(api.client.post("/v1/robots", json=registration, headers=ADMIN)) == [["body", "description"]]
    retrain = api.client.post("/v1/retrains", json={"reason": "x\x00"}, headers=ADMIN)
    assert _locs(retrain) == [["body", "reason"]]


def test_episode_cursor_and_ids_are_validated_by_the_schema(api: Api) -> None:
    assert _locs(api.client.get("/v1/episodes", params={"cursor": "nope"}, headers=ADMIN)) == [
        ["query", "cursor"]
    ]
    assert _locs(api.client.get("/v1/retrains/a%00b", headers=ADMIN)) == [["path", "run_id"]]
    assert _locs(api.client.get("/v1/rollouts/a%00b", headers=ADMIN)) == [["path", "rollout_id"]]
    now = datetime.now(UTC).isoformat()
    assert api.client.get("/v1/episodes", params={"since": now}, headers=ADMIN).status_code == 200
