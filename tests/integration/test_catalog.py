"""The catalog on SQLite and (whenever reachable) PostgreSQL: migrations, robots, episodes, sessions."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from tests.conftest import WriteEpisode
from wamfleet.platform.catalog import queries
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.tables import AuditEntry, Base, Robot, UploadSession
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.contracts.limits import INT4_MAX, INT8_MAX


@pytest.fixture
def catalog(catalog_url: str, embodiment: EmbodimentSpec) -> Catalog:
    catalog = Catalog(catalog_url)
    with catalog.session() as s:
        queries.add_embodiment(s, embodiment)
        queries.add_robot(s, "robot-1", embodiment.name, "lab", "")
        queries.add_robot(s, "robot-2", embodiment.name, "depot", "")
    return catalog


# SQLite cannot reflect the expression index on lower(task), so there alembic skips it (and says
# so); PostgreSQL, where it is the trigram index search relies on, compares it like any other.
@pytest.mark.filterwarnings("ignore:.*expression-based index ix_episodes_task_trgm")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrations_create_exactly_the_modelled_schema(catalog: Catalog) -> None:
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    tables = set(inspect(catalog.engine).get_table_names())
    assert {"robots", "embodiments", "episodes", "episode_tags", "upload_sessions", "audit_log"} <= tables
    Catalog(catalog.url)  # migrating again is a no-op


def test_tokens_are_stored_hashed_and_revocable(catalog: Catalog, embodiment: EmbodimentSpec) -> None:
    with catalog.session() as s:
        token = queries.add_robot(s, "robot-3", embodiment.name, None, "")
    with catalog.session() as s:
        stored = s.get(Robot, "robot-3")
        assert stored is not None
        assert token not in stored.token_hash
        assert stored.token_hash == queries.hash_token(token)
        robot = queries.robot_for_token(s, token)
        assert robot is not None and robot.robot_id == "robot-3"
        assert queries.robot_for_token(s, token + "x") is None
        queries.revoke_token(s, robot)
    with catalog.session() as s:
        assert queries.robot_for_token(s, token) is None
        robot = s.get(Robot, "robot-3")
        assert robot is not None
        fresh = queries.rotate_token(s, robot)
    with catalog.session() as s:
        assert queries.robot_for_token(s, fresh) is not None
        assert queries.robot_for_token(s, token) is None


def test_embodiment_versions_are_immutable(catalog: Catalog, embodiment: EmbodimentSpec) -> None:
    with catalog.session() as s:
        assert queries.add_embodiment(s, embodiment) is False
        with pytest.raises(ValueError, match="bump the version"):
            queries.add_embodiment(s, embodiment.model_copy(update={"fps": 30.0}))
        assert queries.add_embodiment(s, embodiment.model_copy(update={"version": 2, "fps": 30.0}))
    with catalog.session() as s:
        latest = queries.get_embodiment(s, embodiment.name)
        assert latest is not None and latest.version == 2
        first = queries.get_embodiment(s, embodiment.name, 1)
        assert first == embodiment


def _add(catalog: Catalog, manifest: EpisodeManifest) -> None:
    with catalog.session() as s:
        queries.add_episode(s, manifest)


def test_search_filters_and_pages(catalog: Catalog, write_episode: WriteEpisode) -> None:
    made = []
    for i in range(7):
        robot = "robot-1" if i % 2 == 0 else "robot-2"
        _, manifest = write_episode(
            frames=2,
            robot_id=robot,
            task="open the drawer" if i < 3 else "stack 100% of the blocks",
            video_only=i == 6,
            tags={"shift": "night" if i % 3 == 0 else "day"},
            site="lab" if robot == "robot-1" else "depot",
        )
        _add(catalog, manifest)
        made.append(manifest)

    def ids(**where: object) -> list[str]:
        with catalog.session() as s:
            return [e.episode_id for e in queries.search_episodes(s, queries.EpisodeFilter(**where))]  # type: ignore[arg-type]

    assert ids() == sorted(str(m.episode_id) for m in made)  # UUIDv7: recording order
    assert len(ids(robot_id="robot-1")) == 4
    assert len(ids(task="DRAWER")) == 3
    assert len(ids(task="100%")) == 4  # LIKE wildcards in the text are literal
    assert len(ids(task="1_0")) == 0
    assert len(ids(tags=(("shift", "night"),))) == 3
    assert len(ids(tags=(("shift", "night"), ("shift", "day")))) == 0
    assert ids(has_actions=False) == [str(made[6].episode_id)]
    assert len(ids(site="depot")) == 3
    assert len(ids(embodiment="test-arm")) == 7
    assert ids(embodiment="other") == []
    future = datetime.now(UTC) + timedelta(days=1)
    assert ids(since=future) == []
    assert len(ids(until=future)) == 7

    with catalog.session() as s:
        first = queries.search_episodes(s, queries.EpisodeFilter(), limit=3)
        second = queries.search_episodes(s, queries.EpisodeFilter(), limit=3, after=first[-1].episode_id)
        assert [e.episode_id for e in first + second] == ids()[:6]
        summary = queries.episode_summary(first[0])
        assert summary.started_at.tzinfo is not None  # aware datetimes on every database
        assert summary.tags == made[0].tags
        assert queries.count_episodes(s) == 7


def test_upload_sessions_resume_and_expire(catalog: Catalog, write_episode: WriteEpisode) -> None:
    _, manifest = write_episode(frames=2)
    with catalog.session() as s:
        first, created = queries.open_upload_session(s, manifest, timedelta(hours=1))
    assert created
    with catalog.session() as s:
        again, created = queries.open_upload_session(s, manifest, timedelta(hours=1))
    assert not created
    assert again.session_id == first.session_id  # same episode, same manifest: resumed
    with catalog.session() as s:
        stale, _ = queries.open_upload_session(
            s, manifest.model_copy(update={"task": "other"}), timedelta(seconds=-1)
        )
    assert stale.session_id != first.session_id  # a different manifest gets a new session
    with catalog.session() as s:
        expired = queries.expire_upload_sessions(s)
        assert [u.session_id for u in expired] == [stale.session_id]
        statuses = {u.session_id: u.status for u in s.scalars(select(UploadSession))}
    assert statuses == {first.session_id: "expired", stale.session_id: "expired"}


def test_audit_log_keeps_entries(catalog: Catalog) -> None:
    with catalog.session() as s:
        queries.audit(s, "admin", "robot.register", "robot-9", reason="test")
    with catalog.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.target == "robot-9")).one()
        assert entry.details == {"reason": "test"}
        assert entry.at.tzinfo is not None


def test_sqlite_catalog_file_is_created_under_the_data_dir(tmp_path: Path) -> None:
    Catalog(f"sqlite:///{tmp_path / 'nested' / 'catalog.db'}")
    assert (tmp_path / "nested" / "catalog.db").exists()


def test_the_contracts_largest_values_fit_the_columns(catalog: Catalog, write_episode: WriteEpisode) -> None:
    """The contracts' bounds are the columns' (Integer is int4 on PostgreSQL, BigInteger int8):
    whatever a manifest may carry, the catalog stores and reads back unchanged."""
    _, manifest = write_episode(frames=2)
    raw = manifest.model_dump(mode="json")
    raw |= {"num_frames": INT4_MAX, "fps": 1000.0, "started_at": "0001-01-01T12:00:00-11:59"}
    raw["embodiment"]["version"] = INT4_MAX
    raw["outcome"] = {"success": True, "progress": 1.0, "interventions": INT4_MAX}
    raw["files"][0]["size"] = INT8_MAX - sum(f["size"] for f in raw["files"][1:])
    raw["tags"] = {"k" * 63: "v" * 200}
    raw["policy_version"] = "p" * 200
    biggest = EpisodeManifest.model_validate(raw)
    assert biggest.total_bytes == INT8_MAX
    _add(catalog, biggest)
    with catalog.session() as s:
        stored = queries.get_episode(s, biggest.episode_id)
        assert stored is not None
        summary = queries.episode_summary(stored)
    assert (summary.num_frames, summary.total_bytes) == (INT4_MAX, INT8_MAX)
    assert (summary.embodiment.version, summary.outcome.interventions) == (INT4_MAX, INT4_MAX)
    assert summary.started_at == biggest.started_at
    with catalog.session() as s:
        queries.lock_episode(s, str(biggest.episode_id))  # the per-episode lock works on both databases


def test_the_episode_lock_makes_a_second_writer_wait(catalog: Catalog, write_episode: WriteEpisode) -> None:
    """Commit, its cleanup and the sweeper change an episode only under this lock."""
    _, manifest = write_episode(frames=2)
    with catalog.session() as s:
        queries.open_upload_session(s, manifest, timedelta(hours=1))
    episode_id = str(manifest.episode_id)
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with catalog.session() as s:
            queries.lock_episode(s, episode_id)
            held.set()
            time.sleep(0.3)
            order.append("first released")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    with catalog.session() as s:
        queries.lock_episode(s, episode_id)
        order.append("second acquired")
    thread.join()
    assert order == ["first released", "second acquired"]
