"""Catalog queries for dataset snapshots and episode validation (quarantine)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from wamfleet.platform.catalog.queries import audit, now
from wamfleet.platform.catalog.tables import (
    DatasetSnapshot as SnapshotRow,
)
from wamfleet.platform.catalog.tables import (
    Episode,
    EpisodeTag,
    EpisodeValidation,
)
from wamfleet.platform.contracts.dataset import (
    DatasetSnapshot,
    EpisodeCheck,
    SnapshotEpisode,
    SnapshotQuery,
    snapshot_key,
)


def snapshot_episodes(session: Session, query: SnapshotQuery) -> list[SnapshotEpisode]:
    """Committed, not quarantined episodes matching the query (the newest when capped)."""
    stmt = select(Episode).where(
        Episode.episode_id.not_in(
            select(EpisodeValidation.episode_id).where(EpisodeValidation.status == "quarantined")
        )
    )
    if query.embodiment:
        stmt = stmt.where(Episode.embodiment_name == query.embodiment)
    if query.tasks:
        stmt = stmt.where(Episode.task.in_(query.tasks))
    if query.sources:
        stmt = stmt.where(Episode.source.in_([s.value for s in query.sources]))
    if query.since:
        stmt = stmt.where(Episode.committed_at >= query.since)
    if query.until:
        stmt = stmt.where(Episode.committed_at < query.until)
    stmt = stmt.order_by(Episode.episode_id.desc())
    if query.max_episodes:
        stmt = stmt.limit(query.max_episodes)
    episodes = list(session.scalars(stmt))
    tags: dict[str, dict[str, str]] = {e.episode_id: {} for e in episodes}
    if episodes:
        for tag in session.scalars(select(EpisodeTag).where(EpisodeTag.episode_id.in_(list(tags)))):
            tags[tag.episode_id][tag.key] = tag.value
    return [
        SnapshotEpisode(
            episode_id=e.episode_id,
            robot_id=e.robot_id,
            manifest_sha256=e.manifest_sha256,
            task=e.task,
            embodiment=e.embodiment_name,
            embodiment_version=e.embodiment_version,
            site=e.site,
            tags=tags[e.episode_id],
            source=e.source,
            has_actions=e.has_actions,
            num_frames=e.num_frames,
            fps=e.fps,
            success=e.success,
            policy_version=e.policy_version,
            committed_at=e.committed_at,
        )
        for e in episodes
    ]


def record_snapshot(session: Session, snapshot: DatasetSnapshot, actor: str) -> bool:
    """Records a stored snapshot once (same hash, same content); True when it is new."""
    if session.get(SnapshotRow, snapshot.snapshot_hash) is not None:
        return False
    newest = max((e.committed_at for e in snapshot.episodes), default=None)
    session.add(
        SnapshotRow(
            snapshot_hash=snapshot.snapshot_hash,
            created_at=snapshot.created_at,
            episode_count=len(snapshot.episodes),
            newest_committed_at=newest,
            query=snapshot.query.model_dump(mode="json"),
            key=snapshot_key(snapshot.snapshot_hash),
        )
    )
    audit(session, actor, "dataset.snapshot", snapshot.snapshot_hash, episodes=len(snapshot.episodes))
    return True


def last_snapshot(session: Session) -> SnapshotRow | None:
    return session.scalars(select(SnapshotRow).order_by(SnapshotRow.created_at.desc()).limit(1)).first()


def list_snapshots(session: Session, limit: int = 50) -> list[SnapshotRow]:
    return list(session.scalars(select(SnapshotRow).order_by(SnapshotRow.created_at.desc()).limit(limit)))


def episodes_committed_since(session: Session, since: datetime | None) -> int:
    """Episodes committed after `since` (all when None), quarantined ones excluded."""
    stmt = select(func.count()).select_from(Episode)
    stmt = stmt.where(
        Episode.episode_id.not_in(
            select(EpisodeValidation.episode_id).where(EpisodeValidation.status == "quarantined")
        )
    )
    if since is not None:
        stmt = stmt.where(Episode.committed_at > since)
    return int(session.scalar(stmt) or 0)


def validations(session: Session, episode_ids: list[str]) -> dict[str, EpisodeValidation]:
    """Earlier checks of these episodes, keyed by id."""
    found: dict[str, EpisodeValidation] = {}
    for start in range(0, len(episode_ids), 500):
        batch = episode_ids[start : start + 500]
        for row in session.scalars(select(EpisodeValidation).where(EpisodeValidation.episode_id.in_(batch))):
            found[row.episode_id] = row
    return found


def record_validation(session: Session, check: EpisodeCheck, manifest_sha256: str, actor: str) -> None:
    """Stores (or replaces) an episode's check; a quarantine is audited with its reason."""
    row = session.get(EpisodeValidation, check.episode_id)
    if row is None:
        row = EpisodeValidation(episode_id=check.episode_id)
        session.add(row)
    row.status = check.status
    row.reason = check.reason
    row.manifest_sha256 = manifest_sha256
    row.checked_at = now()
    if check.status == "quarantined":
        audit(session, actor, "episode.quarantine", check.episode_id, reason=check.reason)
