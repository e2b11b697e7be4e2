"""Snapshots are frozen and content-addressed; validation quarantines unusable episodes, keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import WriteEpisode
from wamfleet.fleet_agent.episode_format import write_manifest
from wamfleet.pipelines.snapshot import SnapshotError, freeze_snapshot, load_snapshot
from wamfleet.pipelines.validate import load_validation, validate_snapshot
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import add_embodiment, add_episode, add_robot
from wamfleet.platform.catalog.tables import AuditEntry, EpisodeValidation
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.dataset import SnapshotQuery, snapshot_key
from wamfleet.platform.storage import LocalObjectStore
from wamfleet.platform.storage.bundles import upload_bundle


@pytest.fixture
def fleet(
    tmp_path: Path, embodiment: EmbodimentSpec, write_episode: WriteEpisode
) -> tuple[Catalog, LocalObjectStore, str]:
    """Three good episodes and one whose video is cut short (its manifest matches the cut file)."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    store = LocalObjectStore(tmp_path / "objects")
    with catalog.session() as session:
        add_embodiment(session, embodiment)
        add_robot(session, "robot-1", embodiment.name, "lab", "")
    broken = ""
    for i in range(4):
        directory, manifest = write_episode(frames=24)
        if i == 3:
            video = directory / "videos" / "front.mp4"
            video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
            files = [
                f.model_copy(update={"size": video.stat().st_size, "sha256": sha256_file(video)})
                if f.path == "videos/front.mp4"
                else f
                for f in manifest.files
            ]
            manifest = manifest.model_copy(update={"files": files})
            write_manifest(directory, manifest)
            broken = str(manifest.episode_id)
        upload_bundle(store, directory)
        with catalog.session() as session:
            add_episode(session, manifest)
    return catalog, store, broken


def test_snapshot_is_content_addressed_and_written_once(fleet: tuple[Catalog, LocalObjectStore, str]) -> None:
    catalog, store, _ = fleet
    first = freeze_snapshot(catalog, store, SnapshotQuery())
    assert len(first.episodes) == 4
    again = freeze_snapshot(catalog, store, SnapshotQuery(tasks=["stack the blocks"]))
    assert again.snapshot_hash == first.snapshot_hash  # same episodes, same hash, whatever the query
    assert again.created_at == first.created_at  # the stored snapshot, not a rewrite
    assert load_snapshot(store, first.snapshot_hash) == first
    with pytest.raises(SnapshotError, match="no committed"):
        freeze_snapshot(catalog, store, SnapshotQuery(embodiment="someone-else"))
    smaller = freeze_snapshot(catalog, store, SnapshotQuery(max_episodes=2))
    assert len(smaller.episodes) == 2 and smaller.snapshot_hash != first.snapshot_hash
    # An altered stored snapshot is refused on load.
    key = snapshot_key(first.snapshot_hash)
    store.put_bytes(key, store.get_bytes(key).replace(b'"num_frames": 24', b'"num_frames": 25', 1))
    with pytest.raises(ValueError, match="does not match"):
        load_snapshot(store, first.snapshot_hash)


def test_validation_quarantines_with_a_reason_and_deletes_nothing(
    fleet: tuple[Catalog, LocalObjectStore, str],
) -> None:
    catalog, store, broken = fleet
    snapshot = freeze_snapshot(catalog, store, SnapshotQuery())
    report = validate_snapshot(catalog, store, snapshot)
    assert report.checked == 4
    assert len(report.ok_ids) == 3 and broken not in report.ok_ids
    (bad,) = report.quarantined
    assert bad.episode_id == broken and bad.reason and "videos/front.mp4" in bad.reason
    assert load_validation(store, snapshot.snapshot_hash) == report
    with catalog.session() as session:
        row = session.get(EpisodeValidation, broken)
        assert row is not None and row.status == "quarantined"
        audits = session.scalars(select(AuditEntry).where(AuditEntry.action == "episode.quarantine")).all()
        assert [a.target for a in audits] == [broken]
    # Never deleted: the bundle is still in the store.
    assert any(broken in info.key for info in store.list("episodes/"))
    # Checked once: a second run decodes nothing new.
    assert validate_snapshot(catalog, store, snapshot).checked == 0
    # Later snapshots leave the quarantined episode out.
    later = freeze_snapshot(catalog, store, SnapshotQuery())
    assert {e.episode_id for e in later.episodes} == report.ok_ids
