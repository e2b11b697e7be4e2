"""No robot can touch another's data; bad tokens, admin routes, traversal and oversize are refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN, WriteEpisode
from tests.integration.api_support import Api, running_api, settings_for
from wamfleet.platform.contracts import EmbodimentSpec


@pytest.fixture
def api(tmp_path: Path, catalog_url: str, embodiment: EmbodimentSpec) -> Iterator[Api]:
    """The API on each catalog (SQLite, and PostgreSQL as in production)."""
    settings = settings_for(tmp_path, catalog_url, max_file_bytes=200_000)
    with running_api(settings, embodiment) as api:
        yield api


@pytest.fixture
def two_robots(api: Api, write_episode: WriteEpisode) -> tuple[dict[str, str], dict[str, str], str, str]:
    """Robot A and robot B, each with one committed episode; returns their headers and episode ids."""
    a = api.register_robot("robot-a")
    b = api.register_robot("robot-b")
    ids = []
    for headers, robot_id in ((a, "robot-a"), (b, "robot-b")):
        directory, manifest = write_episode(frames=3, robot_id=robot_id)
        ticket = api.upload(headers, directory, manifest)
        assert api.commit(headers, ticket["session_id"]).status_code == 200
        ids.append(str(manifest.episode_id))
    return a, b, ids[0], ids[1]


def test_robot_cannot_open_an_upload_for_another_robot(
    api: Api, two_robots: tuple, write_episode: WriteEpisode
) -> None:
    a, _, _, _ = two_robots
    _, manifest_of_b = write_episode(frames=2, robot_id="robot-b")
    response = api.open(a, manifest_of_b)
    assert response.status_code == 403
    assert "manifest.robot_id 'robot-b' is not this robot ('robot-a')" in response.json()["detail"]


def test_robot_cannot_commit_or_read_another_robots_session(
    api: Api, two_robots: tuple, write_episode: WriteEpisode
) -> None:
    a, b, _, _ = two_robots
    _, manifest = write_episode(frames=2, robot_id="robot-b")
    ticket = api.open(b, manifest).json()
    assert api.commit(a, ticket["session_id"]).status_code == 404
    assert api.client.get(f"/v1/uploads/{ticket['session_id']}", headers=a).status_code == 404


def test_robot_lists_and_downloads_only_its_own_episodes(api: Api, two_robots: tuple) -> None:
    a, _, id_a, id_b = two_robots
    listed = api.client.get("/v1/episodes", headers=a).json()["items"]
    assert [e["episode_id"] for e in listed] == [id_a]
    assert api.client.get("/v1/episodes", params={"robot_id": "robot-b"}, headers=a).status_code == 403
    assert api.client.get(f"/v1/episodes/{id_b}", headers=a).status_code == 404
    assert api.client.get(f"/v1/episodes/{id_b}/download", headers=a).status_code == 404
    assert api.client.get(f"/v1/episodes/{id_a}/download", headers=a).status_code == 200
    assert len(api.client.get("/v1/episodes", headers=ADMIN).json()["items"]) == 2


def test_bad_missing_revoked_and_rotated_tokens_get_401(api: Api, two_robots: tuple) -> None:
    a, _, _, _ = two_robots
    assert api.client.get("/v1/episodes").status_code == 401
    assert api.client.get("/v1/episodes", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.client.get("/v1/episodes", headers={"Authorization": "Basic abc"}).status_code == 401
    rotated = api.client.post("/v1/robots/robot-a/token", headers=ADMIN).json()["token"]
    assert api.client.get("/v1/episodes", headers=a).status_code == 401
    fresh = {"Authorization": f"Bearer {rotated}"}
    assert api.client.get("/v1/episodes", headers=fresh).status_code == 200
    assert api.client.delete("/v1/robots/robot-a/token", headers=ADMIN).status_code == 204
    revoked = api.client.get("/v1/episodes", headers=fresh)
    assert revoked.status_code == 401
    assert revoked.json()["detail"] == "invalid or revoked token"


def test_admin_routes_refuse_robots_with_403(api: Api, two_robots: tuple, embodiment: EmbodimentSpec) -> None:
    a, _, _, _ = two_robots
    for method, path, body in [
        ("POST", "/v1/robots", {"robot_id": "evil", "embodiment": "test-arm"}),
        ("GET", "/v1/robots", None),
        ("POST", "/v1/robots/robot-b/token", None),
        ("DELETE", "/v1/robots/robot-b/token", None),
        ("POST", "/v1/embodiments", embodiment.model_copy(update={"version": 9}).model_dump(mode="json")),
    ]:
        response = api.client.request(method, path, json=body, headers=a)
        assert response.status_code == 403, (method, path)
        assert "admin" in response.json()["detail"]
    assert api.client.get("/v1/robots/robot-b", headers=a).status_code == 403
    assert api.client.get("/v1/robots/robot-a", headers=a).status_code == 200


def test_uploads_need_a_robot_token(api: Api, write_episode: WriteEpisode) -> None:
    _, manifest = write_episode(frames=2)
    response = api.client.post(
        "/v1/uploads", json={"manifest": json.loads(manifest.model_dump_json())}, headers=ADMIN
    )
    assert response.status_code == 403


# Refused by the request's validation before any query: the catalog plays no part, SQLite suffices.
@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("robot_id", ["../etc", "a/b", "UPPER", "x" * 80, ""])
def test_traversal_and_malformed_robot_ids_are_refused(api: Api, robot_id: str) -> None:
    response = api.client.post(
        "/v1/robots", json={"robot_id": robot_id, "embodiment": "test-arm"}, headers=ADMIN
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "robot_id"]


def test_traversal_in_episode_ids_and_file_names_is_refused(
    api: Api, two_robots: tuple, write_episode: WriteEpisode
) -> None:
    a, _, _, _ = two_robots
    assert api.client.get("/v1/episodes/..%2F..%2Fetc", headers=a).status_code in (404, 422)
    assert api.client.get("/v1/episodes/not-a-uuid", headers=a).status_code == 422
    _, manifest = write_episode(frames=2, robot_id="robot-a")
    raw = json.loads(manifest.model_dump_json())
    raw["files"][0]["path"] = "../../../etc/passwd"
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=a)
    assert response.status_code == 422
    assert "unexpected ['../../../etc/passwd']" in json.dumps(response.json()["detail"])
    raw = json.loads(manifest.model_dump_json())
    raw["episode_id"] = "../../x"
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=a)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "manifest", "episode_id"]


def test_object_urls_refuse_traversal_and_tampering(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-a")
    _, manifest = write_episode(frames=2, robot_id="robot-a")
    url = api.open(robot, manifest).json()["files"][0]["url"]
    path, query = url.split("?")
    assert api.client.put(
        path.replace("uploads/", "uploads/../episodes/") + "?" + query, content=b"x"
    ).status_code in (
        400,
        403,
        404,
    )
    tampered = url.replace("data.parquet", "videos/front.mp4")
    assert api.client.put(tampered, content=b"x").status_code == 403
    assert api.client.get(url).status_code == 403  # a PUT signature does not allow GET
    assert api.client.put(path + "?expires=1&signature=00", content=b"x").status_code == 403


def test_oversized_files_are_refused_naming_the_file(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-a")
    directory, manifest = write_episode(frames=2, robot_id="robot-a")
    raw = json.loads(manifest.model_dump_json())
    raw["files"][1]["size"] = 10_000_000
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)
    assert response.status_code == 413
    assert response.json()["detail"].startswith("videos/front.mp4: 10000000 bytes exceeds")

    ticket = api.open(robot, manifest).json()
    target = ticket["files"][0]
    too_big = (directory / target["path"]).read_bytes() + b"extra bytes"
    response = api.client.put(target["url"], content=too_big)
    assert response.status_code == 413
    assert "exceeds the declared size" in response.json()["detail"]
    assert not api.state.store.exists(f"uploads/{ticket['session_id']}/{target['path']}")


def test_malformed_manifests_are_refused_naming_the_field(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-a")
    _, manifest = write_episode(frames=2, robot_id="robot-a")
    raw = json.loads(manifest.model_dump_json())
    raw["files"][0]["sha256"] = "zz"
    del raw["task"]
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)
    assert response.status_code == 422
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "manifest", "task") in locs
    assert ("body", "manifest", "files", 0, "sha256") in locs
    assert api.client.post("/v1/uploads", content=b"{not json", headers=robot).status_code == 422


def test_manifest_must_match_the_registered_embodiment(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-a")
    _, manifest = write_episode(frames=2, robot_id="robot-a")
    raw = json.loads(manifest.model_dump_json())
    raw["state_names"] = ["x", "y", "z"]
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)
    assert response.status_code == 422
    assert response.json()["detail"] == "manifest.state_names do not match the embodiment's state_names"
    raw = json.loads(manifest.model_dump_json())
    raw["embodiment"] = {"name": "unknown-arm", "version": 1}
    response = api.client.post("/v1/uploads", json={"manifest": raw}, headers=robot)
    assert response.status_code == 422
    assert "unknown-arm v1 is not registered" in response.json()["detail"]


def test_registration_errors(api: Api) -> None:
    api.register_robot("robot-a")
    dup = api.client.post("/v1/robots", json={"robot_id": "robot-a", "embodiment": "test-arm"}, headers=ADMIN)
    assert dup.status_code == 409
    unknown = api.client.post("/v1/robots", json={"robot_id": "robot-z", "embodiment": "nope"}, headers=ADMIN)
    assert unknown.status_code == 422
    assert "embodiment" in unknown.json()["detail"]


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # no catalog involved
def test_openapi_docs_are_served(api: Api) -> None:
    assert api.client.get("/docs").status_code == 200
    spec = api.client.get("/openapi.json").json()
    assert "/v1/uploads/{session_id}/commit" in spec["paths"]
