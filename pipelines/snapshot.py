"""Freeze the catalog's view into an immutable, content-addressed dataset snapshot.

The snapshot's JSON is written once under its hash and never overwritten: freezing the same
episodes again returns the stored snapshot, so its hash is a stable lineage key.
"""

from __future__ import annotations

from wamfleet.platform.catalog.datasets import record_snapshot, snapshot_episodes
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import now
from wamfleet.platform.contracts.dataset import DatasetSnapshot, SnapshotQuery, snapshot_key
from wamfleet.platform.storage.base import ObjectNotFound, ObjectStore


class SnapshotError(ValueError):
    pass


def freeze_snapshot(
    catalog: Catalog, store: ObjectStore, query: SnapshotQuery, actor: str = "pipeline"
) -> DatasetSnapshot:
    with catalog.session() as session:
        episodes = snapshot_episodes(session, query)
    if not episodes:
        raise SnapshotError(
            f"snapshot: no committed, unquarantined episode matches {query.model_dump_json()}"
        )
    snapshot = DatasetSnapshot.freeze(query, episodes, now())
    key = snapshot_key(snapshot.snapshot_hash)
    if store.exists(key):
        snapshot = load_snapshot(store, snapshot.snapshot_hash)
    else:
        store.put_bytes(key, snapshot.model_dump_json(indent=1).encode())
    with catalog.session() as session:
        record_snapshot(session, snapshot, actor)
    return snapshot


def load_snapshot(store: ObjectStore, snapshot_hash: str) -> DatasetSnapshot:
    """Reads a stored snapshot back; the hash check refuses an altered one."""
    key = snapshot_key(snapshot_hash)
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        raise SnapshotError(f"snapshot {snapshot_hash}: not found at {key}") from None
    snapshot = DatasetSnapshot.model_validate_json(raw)
    if snapshot.snapshot_hash != snapshot_hash:
        raise SnapshotError(f"snapshot {snapshot_hash}: {key} holds snapshot {snapshot.snapshot_hash}")
    return snapshot
