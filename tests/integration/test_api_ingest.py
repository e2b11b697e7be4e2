"""Upload sessions and commits through the real API: on the local store and on S3 (moto), on the
SQLite and on the PostgreSQL catalog."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import ADMIN, WriteEpisode, catalog_on
from tests.integration.api_support import Api, running_api, settings_for
from wamfleet.platform.catalog import queries
from wamfleet.platform.catalog.ingest import staging_key
from wamfleet.platform.catalog.tables import AuditEntry, UploadSession
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.checksums import CHECKSUM_HEADER
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest
from wamfleet.platform.storage.bundles import iter_manifests

# Store-specific behaviour (staging, copies, publishing) runs on both stores, catalog-specific
# behaviour (locks, inserts, the sweeper's queries) on both catalogs. The fourth combination, S3
# with PostgreSQL, would cost as much again as the S3 runs (the slowest) for code paths the other
# three already cover: the ingest code meets the store and the catalog only through their APIs.
STORE_CATALOG = [
    pytest.param(("local", "sqlite"), id="local-sqlite"),
    pytest.param(("s3", "sqlite"), id="s3-sqlite"),
    pytest.param(("local", "postgresql"), id="local-postgresql"),
]


@pytest.fixture(params=STORE_CATALOG)
def api(request: pytest.FixtureRequest, tmp_path: Path, embodiment: EmbodimentSpec) -> Iterator[Api]:
    store, catalog = request.param
    overrides: dict[str, object] = {}
    if store == "s3":
        host, port = request.getfixturevalue("moto_endpoint").split(":")
        overrides = {
            "storage_backend": "s3",
            "s3_endpoint": f"{host}:{port}",
            "s3_access_key": "a",
            "s3_secret_key": "b",
            "s3_region": "us-east-1",
            "s3_bucket": f"api-{tmp_path.name[-20:].lower().replace('_', '-')}",
        }
    with (
        catalog_on(catalog, request, tmp_path) as catalog_url,
        running_api(settings_for(tmp_path, catalog_url, **overrides), embodiment) as api,
    ):
        yield api


def test_upload_commit_search_download(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=12, robot_id="robot-1", tags={"shift": "night"})
    ticket = api.upload(robot, directory, manifest)
    assert ticket["status"] == "open"
    assert [f["path"] for f in ticket["files"]] == ["data.parquet", "videos/front.mp4", "videos/wrist.mp4"]

    # Nothing is visible before the commit.
    assert api.client.get("/v1/episodes", headers=ADMIN).json()["items"] == []
    committed = api.commit(robot, ticket["session_id"])
    assert committed.status_code == 200, committed.text
    assert committed.json()["episode_id"] == str(manifest.episode_id)

    page = api.client.get(
        "/v1/episodes", params={"tag": "shift=night", "task": "blocks"}, headers=robot
    ).json()
    assert [e["episode_id"] for e in page["items"]] == [str(manifest.episode_id)]
    assert page["items"][0]["outcome"]["success"] is True

    links = api.client.get(f"/v1/episodes/{manifest.episode_id}/download", headers=robot).json()
    for link in links["files"]:
        body = (
            api.client.get(link["url"]).content
            if link["url"].startswith("/")
            else httpx.get(link["url"]).content
        )
        assert hashlib.sha256(body).hexdigest() == link["sha256"]
        assert body == (directory / link["path"]).read_bytes()
    # Staging is emptied once the episode is committed.
    assert list(api.state.store.list("uploads/")) == []


def test_commit_is_idempotent_and_reopen_reports_committed(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)
    first = api.commit(robot, ticket["session_id"])
    second = api.commit(robot, ticket["session_id"])
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    reopened = api.open(robot, manifest)
    assert reopened.status_code == 200
    assert reopened.json()["status"] == "committed"
    assert all(f["received"] for f in reopened.json()["files"])
    assert len(api.client.get("/v1/episodes", headers=ADMIN).json()["items"]) == 1


def test_resumed_session_reports_received_files(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.open(robot, manifest).json()
    first = ticket["files"][0]
    assert (
        api.put(first["url"], (directory / first["path"]).read_bytes(), first["headers"]).status_code == 200
    )
    resumed = api.open(robot, manifest).json()
    assert resumed["session_id"] == ticket["session_id"]
    assert [f["received"] for f in resumed["files"]] == [True, False, False]


def test_commit_names_missing_and_wrong_files(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.open(robot, manifest).json()
    targets = {f["path"]: f for f in ticket["files"]}
    missing = api.commit(robot, ticket["session_id"])
    assert missing.status_code == 422
    assert missing.json()["detail"] == "data.parquet: not uploaded"

    def put(path: str, data: bytes | None = None) -> None:
        target = targets[path]
        body = (directory / path).read_bytes() if data is None else data
        assert api.put(target["url"], body, target["headers"]).status_code == 200

    # Bad bytes staged the way a store that checks no checksums (moto) would keep them: the
    # commit still finds them, by size and by the SHA-256 of its own copy.
    staged = partial(staging_key, ticket["session_id"])
    put("data.parquet")
    api.state.store.put_bytes(staged("videos/front.mp4"), (directory / "videos/front.mp4").read_bytes()[:-10])
    short = api.commit(robot, ticket["session_id"])
    assert short.status_code == 422
    assert short.json()["detail"].startswith("videos/front.mp4: uploaded")

    tampered = bytearray((directory / "videos/front.mp4").read_bytes())
    tampered[100] ^= 0xFF
    api.state.store.put_bytes(staged("videos/front.mp4"), bytes(tampered))
    put("videos/wrist.mp4")
    bad_hash = api.commit(robot, ticket["session_id"])
    assert bad_hash.status_code == 422
    assert "videos/front.mp4: sha256" in bad_hash.json()["detail"]
    assert api.client.get("/v1/episodes", headers=ADMIN).json()["items"] == []
    # Nothing partial is kept: no final keys, no scratch copies.
    assert [i.key for i in api.state.store.list("") if not i.key.startswith("uploads/")] == []

    # The bad copy was dropped, so the robot sees the file as missing and sends it again.
    resumed = {f["path"]: f["received"] for f in api.open(robot, manifest).json()["files"]}
    assert resumed == {"data.parquet": True, "videos/front.mp4": False, "videos/wrist.mp4": True}
    put("videos/front.mp4")
    assert api.commit(robot, ticket["session_id"]).status_code == 200


def test_late_writes_to_staging_cannot_change_an_accepted_episode(
    api: Api, write_episode: WriteEpisode
) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)
    assert api.commit(robot, ticket["session_id"]).status_code == 200
    for target in ticket["files"]:  # the old URLs have not expired yet
        assert api.put(target["url"], b"overwrite", target["headers"]).status_code in (200, 400, 409)
    store = api.state.store
    for entry in manifest.files:
        assert store.sha256(manifest.prefix + entry.path) == entry.sha256


@pytest.mark.parametrize(
    "crash_at",
    [
        "copied:videos/front.mp4",
        "verified",
        "published",
        "manifest-written",
        "recording",  # the catalog insert fails after publish (rolled back, the published files removed)
        "recorded",
    ],
)
def test_commit_crashing_at_any_step_completes_exactly_once_on_retry(
    api: Api, write_episode: WriteEpisode, crash_at: str
) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)

    def crash(step: str) -> None:
        if step == crash_at:
            raise RuntimeError(f"platform died at {step}")

    api.state.ingest.step_hook = crash
    with pytest.raises(RuntimeError, match="platform died"):
        api.commit(robot, ticket["session_id"])
    api.state.ingest.step_hook = None
    retried = api.commit(robot, ticket["session_id"])
    assert retried.status_code == 200, retried.text
    items = api.client.get("/v1/episodes", headers=ADMIN).json()["items"]
    assert [i["episode_id"] for i in items] == [str(manifest.episode_id)]
    for entry in manifest.files:
        assert api.state.store.sha256(manifest.prefix + entry.path) == entry.sha256
    # Whatever a crash left in staging or scratch, the sweeper removes once the session is done.
    api.state.ingest.expire_stale_sessions()
    assert [i.key for i in api.state.store.list("uploads/")] == []
    assert [i.key for i in api.state.store.list("commits/")] == []


def test_concurrent_commits_record_the_episode_once(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda: codes.append(api.commit(robot, ticket["session_id"]).status_code))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 4
    assert len(api.client.get("/v1/episodes", headers=ADMIN).json()["items"]) == 1


def test_episode_paging_with_cursor(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    ids = []
    for _ in range(5):
        directory, manifest = write_episode(frames=2, robot_id="robot-1")
        ticket = api.upload(robot, directory, manifest)
        assert api.commit(robot, ticket["session_id"]).status_code == 200
        ids.append(str(manifest.episode_id))
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/episodes", params=params, headers=ADMIN).json()
        seen += [i["episode_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)


def test_expired_session_is_gone_and_its_staging_is_removed(api: Api, write_episode: WriteEpisode) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=2, robot_id="robot-1")
    api.state.ingest.session_ttl = timedelta(seconds=-1)
    ticket = api.upload(robot, directory, manifest) if api.settings.storage_backend == "s3" else None
    if ticket is None:  # the local store refuses uploads into an expired session outright
        ticket = api.open(robot, manifest).json()
        assert api.put(ticket["files"][0]["url"], b"x").status_code == 409
    gone = api.commit(robot, ticket["session_id"])
    assert gone.status_code == 410
    assert "expired" in gone.json()["detail"]
    assert api.state.ingest.expire_stale_sessions() >= 1
    assert list(api.state.store.list(f"uploads/{ticket['session_id']}/")) == []


def test_staging_rewritten_during_a_commit_never_reaches_final_keys(
    api: Api, write_episode: WriteEpisode
) -> None:
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)
    rival: dict[str, int] = {}

    def meddle(step: str) -> None:
        if step == "verified" and not rival:
            # While this commit is between its check and its publish, the robot rewrites a
            # staged file and a second commit of the same session runs to its end.
            # (written into staging directly: a store that checks checksums refuses this PUT)
            api.state.store.put_bytes(
                staging_key(ticket["session_id"], ticket["files"][1]["path"]), b"tampered"
            )
            rival["status"] = api.commit(robot, ticket["session_id"]).status_code

    api.state.ingest.step_hook = meddle
    assert api.commit(robot, ticket["session_id"]).status_code == 200
    api.state.ingest.step_hook = None
    assert rival["status"] == 422  # the rival verified its own copy and refused it
    for entry in manifest.files:
        assert api.state.store.sha256(manifest.prefix + entry.path) == entry.sha256
    assert [i.key for i in api.state.store.list("commits/")] == []


def _published(api: Api, manifest: EpisodeManifest) -> list[str]:
    return [i.key for i in api.state.store.list(manifest.prefix)]


def test_a_catalog_insert_failing_after_publish_leaves_nothing_under_the_final_keys(
    api: Api, write_episode: WriteEpisode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert used to fail (a number the column cannot hold) after the files and manifest.json
    were copied to the final keys: `data ls` and the LeRobot export then saw an episode the
    catalog did not have. Now what was published is removed, and a retry commits it whole."""
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)

    def overflow(*_: object) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    with monkeypatch.context() as patch:
        patch.setattr(queries, "add_episode", overflow)
        with pytest.raises(OverflowError):
            api.commit(robot, ticket["session_id"])
    assert _published(api, manifest) == []
    assert list(iter_manifests(api.state.store)) == []
    assert api.client.get("/v1/episodes", headers=ADMIN).json()["items"] == []

    assert api.commit(robot, ticket["session_id"]).status_code == 200
    for entry in manifest.files:
        assert api.state.store.sha256(manifest.prefix + entry.path) == entry.sha256
    assert [m.episode_id for m in iter_manifests(api.state.store)] == [manifest.episode_id]


def test_a_failed_commits_cleanup_never_removes_what_another_commit_records(
    api: Api, write_episode: WriteEpisode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commit A has published; commit B of the same session fails its insert and removes the
    files; A must notice (under the episode's lock) and publish again, never record a hole."""
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)
    add_episode = queries.add_episode
    failing: list[bool] = []

    def add_or_fail(*args: Any) -> Any:
        if failing:
            raise OverflowError("the insert of commit B fails")
        return add_episode(*args)

    monkeypatch.setattr(queries, "add_episode", add_or_fail)
    rival: dict[str, object] = {}

    def meddle(step: str) -> None:
        if step == "manifest-written" and not rival:
            rival["running"] = True
            failing.append(True)
            try:
                api.commit(robot, ticket["session_id"])
            except OverflowError as exc:
                rival["error"] = exc
            failing.clear()
            rival["left"] = _published(api, manifest)

    api.state.ingest.step_hook = meddle
    assert api.commit(robot, ticket["session_id"]).status_code == 200
    api.state.ingest.step_hook = None
    assert isinstance(rival["error"], OverflowError) and rival["left"] == []  # B removed everything
    for entry in manifest.files:  # and A published again before recording
        assert api.state.store.sha256(manifest.prefix + entry.path) == entry.sha256
    assert len(api.client.get("/v1/episodes", headers=ADMIN).json()["items"]) == 1


def test_the_sweeper_removes_an_episode_published_but_never_recorded(
    api: Api, write_episode: WriteEpisode, caplog: pytest.LogCaptureFixture
) -> None:
    """A platform that died between publishing and recording, and a robot that never retried:
    once the session expires, the sweeper removes the episode from the final keys and logs it."""
    robot = api.register_robot("robot-1")
    kept_dir, kept = write_episode(frames=2, robot_id="robot-1")
    kept_ticket = api.upload(robot, kept_dir, kept)
    assert api.commit(robot, kept_ticket["session_id"]).status_code == 200
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.upload(robot, directory, manifest)

    def die(step: str) -> None:
        if step == "manifest-written":
            raise RuntimeError("platform died")

    api.state.ingest.step_hook = die
    with pytest.raises(RuntimeError, match="platform died"):
        api.commit(robot, ticket["session_id"])
    api.state.ingest.step_hook = None
    assert MANIFEST_FILE in {k.rsplit("/", 1)[-1] for k in _published(api, manifest)}

    assert api.state.ingest.expire_stale_sessions() == 0  # still open: a retry may finish it
    assert _published(api, manifest)
    with api.state.catalog.session() as s:
        upload = s.get(UploadSession, ticket["session_id"])
        assert upload is not None
        upload.expires_at = queries.now() - timedelta(seconds=1)
    with caplog.at_level(logging.WARNING, logger="wamfleet.platform.catalog.ingest"):
        assert api.state.ingest.expire_stale_sessions() == 1
    assert _published(api, manifest) == []
    assert f"removed episode {manifest.episode_id}" in caplog.text
    assert manifest.prefix + MANIFEST_FILE in caplog.text
    assert [m.episode_id for m in iter_manifests(api.state.store)] == [kept.episode_id]  # untouched
    with api.state.catalog.session() as s:
        actions = [
            a.action
            for a in s.scalars(select(AuditEntry).where(AuditEntry.target == str(manifest.episode_id)))
        ]
    assert {"upload.expire", "episode.orphan.remove"} <= set(actions)
    gone = api.commit(robot, ticket["session_id"])
    assert gone.status_code == 410


@pytest.mark.parametrize("api", [("local", "sqlite")], indirect=True)
def test_the_local_store_refuses_a_damaged_put_and_keeps_nothing(
    api: Api, write_episode: WriteEpisode
) -> None:
    """As S3 does with x-amz-checksum-sha256: the body is hashed on arrival and a mismatch is a
    400 naming the header, with nothing staged, so the robot sends it again at once."""
    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    ticket = api.open(robot, manifest).json()
    video = next(f for f in ticket["files"] if f["path"] == "videos/front.mp4")
    good = (directory / video["path"]).read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    refused = api.put(video["url"], bytes(damaged), video["headers"])
    assert refused.status_code == 400
    assert refused.json()["detail"].startswith(f"{CHECKSUM_HEADER}: the body's SHA-256 does not match")
    unsigned = api.put(video["url"], good)  # the header its URL was signed for is missing
    assert unsigned.status_code == 400 and CHECKSUM_HEADER in unsigned.json()["detail"]
    assert list(api.state.store.list(f"uploads/{ticket['session_id']}/")) == []
    assert api.put(video["url"], good, video["headers"]).status_code == 200


@pytest.mark.parametrize("store_checksums", ["trust", "read-back"])
@pytest.mark.parametrize("api", [("local", "sqlite"), ("s3", "sqlite")], indirect=True)
def test_a_commit_verifies_by_the_stores_checksum_or_says_it_read_back(
    api: Api, write_episode: WriteEpisode, store_checksums: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With `trust` the commit takes the SHA-256 the store computed while copying (no byte comes
    back through the platform); with `read-back` it reads every file back, and says so in the log
    and in /metrics."""
    api.state.ingest.trust_store_checksums = store_checksums == "trust"
    method = "store_checksum" if store_checksums == "trust" else "read_back"
    metric = f'wamfleet_ingest_file_verifications_total{{method="{method}"}}'

    def verified() -> float:
        for line in api.client.get("/metrics/").text.splitlines():
            if line.startswith(metric):
                return float(line.split()[-1])
        return 0.0

    robot = api.register_robot("robot-1")
    directory, manifest = write_episode(frames=4, robot_id="robot-1")
    before = verified()
    reads: list[str] = []
    sha256 = api.state.store.sha256

    def counted_sha256(key: str) -> str:
        reads.append(key)
        return str(sha256(key))

    api.state.store.sha256 = counted_sha256
    ticket = api.upload(robot, directory, manifest)
    with caplog.at_level(logging.WARNING, logger="wamfleet.platform.catalog.ingest"):
        assert api.commit(robot, ticket["session_id"]).status_code == 200
    assert verified() - before == len(manifest.files)
    read_back = [r for r in caplog.records if "reading the bytes back" in r.getMessage()]
    if store_checksums == "trust":
        assert reads == [] and read_back == []
    else:
        assert len(reads) == len(read_back) == len(manifest.files)
