"""Decode-check a snapshot's episodes; quarantine the bad ones with a reason, never delete them.

Commit already proved every file arrived intact (sizes and sha256); this step proves the bytes
are usable: the parquet parses with the declared features, every camera decodes to the declared
number of frames. A check is remembered per manifest sha256, so only new episodes are decoded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wamfleet.fleet_agent.episode_format import BundleError
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.platform.catalog.datasets import record_validation, validations
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import manifest_digest
from wamfleet.platform.contracts.dataset import (
    DatasetSnapshot,
    EpisodeCheck,
    SnapshotEpisode,
    ValidationReport,
    validation_key,
)
from wamfleet.platform.storage.base import ObjectStore, StorageError
from wamfleet.platform.storage.bundles import download_bundle


def check_bundle(directory: Path, entry: SnapshotEpisode) -> str | None:
    """The reason a downloaded bundle is unusable, or None when it is fine."""
    try:
        reader = EpisodeReader(directory)
    except BundleError as exc:
        return str(exc)
    with reader:
        if reader.num_frames != entry.num_frames:
            return f"data.parquet: {reader.num_frames} rows, the catalog recorded {entry.num_frames}"
        try:
            states = reader.states()
            actions = reader.actions()
        except (BundleError, ValueError) as exc:
            return f"data.parquet: {exc}"
        if (actions is not None) != entry.has_actions:
            found = "present" if actions is not None else "absent"
            return f"data.parquet: has_actions is {entry.has_actions} but actions are {found}"
        if len(states) != reader.num_frames:
            return f"data.parquet: {len(states)} states for {reader.num_frames} frames"
        for camera in reader.cameras:
            decoded = 0
            try:
                for image in reader.frames(0, reader.num_frames, [camera])[camera]:
                    if image.ndim != 3 or image.dtype != np.uint8:
                        return f"videos/{camera}.mp4: frame {decoded} decodes as {image.dtype}{image.shape}"
                    decoded += 1
            except (BundleError, ValueError, OSError) as exc:
                return f"videos/{camera}.mp4: {exc}"
            if decoded != reader.num_frames:
                return f"videos/{camera}.mp4: decoded {decoded} frames, expected {reader.num_frames}"
    return None


def check_episode(store: ObjectStore, entry: SnapshotEpisode, workdir: Path) -> EpisodeCheck:
    target = workdir / entry.episode_id
    try:
        manifest = download_bundle(store, entry.robot_id, entry.episode_id, target)
    except StorageError as exc:
        return EpisodeCheck(episode_id=entry.episode_id, status="quarantined", reason=f"download: {exc}")
    if manifest_digest(manifest) != entry.manifest_sha256:
        return EpisodeCheck(
            episode_id=entry.episode_id,
            status="quarantined",
            reason="manifest.json: differs from the snapshot's",
        )
    reason = check_bundle(target, entry)
    if reason is None:
        return EpisodeCheck(episode_id=entry.episode_id, status="ok")
    return EpisodeCheck(episode_id=entry.episode_id, status="quarantined", reason=reason)


def validate_snapshot(
    catalog: Catalog,
    store: ObjectStore,
    snapshot: DatasetSnapshot,
    actor: str = "pipeline",
    on_episode: Callable[[EpisodeCheck], None] | None = None,
) -> ValidationReport:
    """Checks every episode not checked before (at this manifest) and stores the report."""
    digests = {e.episode_id: e.manifest_sha256 for e in snapshot.episodes}
    with catalog.session() as session:
        prior = validations(session, list(digests))
        known = {
            eid: EpisodeCheck(episode_id=eid, status=row.status, reason=row.reason)  # type: ignore[arg-type]
            for eid, row in prior.items()
            if row.manifest_sha256 == digests[eid]
        }
    results: list[EpisodeCheck] = []
    checked = 0
    with tempfile.TemporaryDirectory(prefix="wamfleet-validate-") as tmp:
        for entry in snapshot.episodes:
            check = known.get(entry.episode_id)
            if check is None:
                check = check_episode(store, entry, Path(tmp))
                checked += 1
                with catalog.session() as session:
                    record_validation(session, check, entry.manifest_sha256, actor)
            results.append(check)
            if on_episode is not None:
                on_episode(check)
    report = ValidationReport(snapshot_hash=snapshot.snapshot_hash, checked=checked, results=results)
    store.put_bytes(validation_key(snapshot.snapshot_hash), report.model_dump_json(indent=1).encode())
    return report


def load_validation(store: ObjectStore, snapshot_hash: str) -> ValidationReport:
    return ValidationReport.model_validate_json(store.get_bytes(validation_key(snapshot_hash)))
