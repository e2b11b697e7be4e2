"""Catalog reads and writes, one function per question; callers own the transaction."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from wamfleet.platform.catalog.tables import AuditEntry, Embodiment, Episode, EpisodeTag, Robot, UploadSession
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, Outcome
from wamfleet.platform.contracts.ingest import EpisodePage, EpisodeSummary, RobotInfo

TOKEN_PREFIX = "wfr_"
EPISODE_LOCK_CLASS = 0x7766_6570  # "wfep": advisory locks of episodes, keyed by a hash of the id


def now() -> datetime:
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain digest is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def audit(session: Session, actor: str, action: str, target: str, **details: Any) -> None:
    session.add(AuditEntry(at=now(), actor=actor, action=action, target=target, details=details))


# Embodiments ------------------------------------------------------------------------------


def get_embodiment(session: Session, name: str, version: int | None = None) -> EmbodimentSpec | None:
    query = select(Embodiment).where(Embodiment.name == name)
    if version is None:
        query = query.order_by(Embodiment.version.desc()).limit(1)
    else:
        query = query.where(Embodiment.version == version)
    row = session.scalars(query).first()
    return None if row is None else EmbodimentSpec.model_validate(row.spec)


def add_embodiment(session: Session, spec: EmbodimentSpec) -> bool:
    """Adds a spec; returns False if the identical spec exists. A different one raises ValueError."""
    existing = get_embodiment(session, spec.name, spec.version)
    if existing is not None:
        if existing != spec:
            raise ValueError(
                f"embodiment {spec.name} v{spec.version} exists with a different spec; bump the version"
            )
        return False
    session.add(
        Embodiment(name=spec.name, version=spec.version, spec=spec.model_dump(mode="json"), created_at=now())
    )
    return True


def list_embodiments(session: Session) -> list[EmbodimentSpec]:
    rows = session.scalars(select(Embodiment).order_by(Embodiment.name, Embodiment.version))
    return [EmbodimentSpec.model_validate(r.spec) for r in rows]


# Robots ----------------------------------------------------------------------------------


def robot_info(robot: Robot) -> RobotInfo:
    return RobotInfo(
        robot_id=robot.robot_id,
        embodiment=robot.embodiment_name,
        site=robot.site,
        description=robot.description,
        created_at=robot.created_at,
        last_seen_at=robot.last_seen_at,
        revoked=robot.revoked_at is not None,
    )


def add_robot(session: Session, robot_id: str, embodiment: str, site: str | None, description: str) -> str:
    """Registers a robot and returns its token; only the token's hash is stored."""
    token = new_token()
    at = now()
    session.add(
        Robot(
            robot_id=robot_id,
            embodiment_name=embodiment,
            site=site,
            description=description,
            token_hash=hash_token(token),
            token_created_at=at,
            revoked_at=None,
            created_at=at,
            last_seen_at=None,
        )
    )
    return token


def rotate_token(session: Session, robot: Robot) -> str:
    token = new_token()
    robot.token_hash = hash_token(token)
    robot.token_created_at = now()
    robot.revoked_at = None
    return token


def revoke_token(session: Session, robot: Robot) -> None:
    robot.revoked_at = now()
    robot.token_hash = hash_token(new_token())  # the old token can never match again


def robot_for_token(session: Session, token: str) -> Robot | None:
    robot = session.scalars(select(Robot).where(Robot.token_hash == hash_token(token))).first()
    if robot is None or robot.revoked_at is not None:
        return None
    return robot


# Episodes --------------------------------------------------------------------------------


def manifest_digest(manifest: EpisodeManifest) -> str:
    return hashlib.sha256(manifest.model_dump_json(indent=2).encode()).hexdigest()


def add_episode(session: Session, manifest: EpisodeManifest) -> Episode:
    episode = Episode(
        episode_id=str(manifest.episode_id),
        robot_id=manifest.robot_id,
        embodiment_name=manifest.embodiment.name,
        embodiment_version=manifest.embodiment.version,
        task=manifest.task,
        site=manifest.site,
        source=manifest.source.value,
        fps=manifest.fps,
        num_frames=manifest.num_frames,
        started_at=manifest.started_at,
        has_actions=manifest.has_actions,
        policy_version=manifest.policy_version,
        success=manifest.outcome.success,
        progress=manifest.outcome.progress,
        interventions=manifest.outcome.interventions,
        total_bytes=manifest.total_bytes,
        manifest_sha256=manifest_digest(manifest),
        manifest=manifest.model_dump(mode="json"),
        quality=None,
        committed_at=now(),
    )
    session.add(episode)
    for key, value in manifest.tags.items():
        session.add(EpisodeTag(episode_id=episode.episode_id, key=key, value=value))
    return episode


def get_episode(session: Session, episode_id: uuid.UUID | str) -> Episode | None:
    return session.get(Episode, str(episode_id))


def episode_summary(episode: Episode) -> EpisodeSummary:
    manifest = EpisodeManifest.model_validate(episode.manifest)
    return EpisodeSummary(
        episode_id=manifest.episode_id,
        robot_id=episode.robot_id,
        embodiment=manifest.embodiment,
        task=episode.task,
        site=episode.site,
        tags=manifest.tags,
        source=EpisodeSource(episode.source),
        fps=episode.fps,
        num_frames=episode.num_frames,
        started_at=episode.started_at,
        has_actions=episode.has_actions,
        policy_version=episode.policy_version,
        outcome=Outcome(
            success=episode.success, progress=episode.progress, interventions=episode.interventions
        ),
        total_bytes=episode.total_bytes,
        committed_at=episode.committed_at,
    )


@dataclass(frozen=True)
class EpisodeFilter:
    robot_id: str | None = None
    embodiment: str | None = None
    task: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    has_actions: bool | None = None
    success: bool | None = None
    source: EpisodeSource | None = None
    site: str | None = None
    policy_version: str | None = None


def search_episodes(
    session: Session,
    where: EpisodeFilter,
    limit: int = 100,
    after: str | None = None,
    newest_first: bool = False,
) -> list[Episode]:
    """Episodes in recording order (UUIDv7 ids sort by time), or newest first; `after` is the last id
    of the previous page."""
    query = select(Episode)
    if where.robot_id:
        query = query.where(Episode.robot_id == where.robot_id)
    if where.embodiment:
        query = query.where(Episode.embodiment_name == where.embodiment)
    if where.task:
        escaped = where.task.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(func.lower(Episode.task).like(f"%{escaped}%", escape="\\"))
    for key, value in where.tags:
        tagged = select(EpisodeTag.episode_id).where(EpisodeTag.key == key, EpisodeTag.value == value)
        query = query.where(Episode.episode_id.in_(tagged))
    if where.since:
        query = query.where(Episode.started_at >= where.since)
    if where.until:
        query = query.where(Episode.started_at < where.until)
    if where.has_actions is not None:
        query = query.where(Episode.has_actions == where.has_actions)
    if where.success is not None:
        query = query.where(Episode.success == where.success)
    if where.source is not None:
        query = query.where(Episode.source == where.source.value)
    if where.site:
        query = query.where(Episode.site == where.site)
    if where.policy_version:
        query = query.where(Episode.policy_version == where.policy_version)
    if newest_first:
        if after:
            query = query.where(Episode.episode_id < after)
        return list(session.scalars(query.order_by(Episode.episode_id.desc()).limit(limit)))
    if after:
        query = query.where(Episode.episode_id > after)
    return list(session.scalars(query.order_by(Episode.episode_id).limit(limit)))


def episode_page(
    session: Session, where: EpisodeFilter, limit: int, after: str | None = None, newest_first: bool = False
) -> EpisodePage:
    """One page of search_episodes; next_cursor is set only when another episode follows (one more
    row than the page is read to know)."""
    rows = search_episodes(session, where, limit=limit + 1, after=after, newest_first=newest_first)
    items = [episode_summary(e) for e in rows[:limit]]
    return EpisodePage(items=items, next_cursor=str(items[-1].episode_id) if len(rows) > limit else None)


def count_episodes(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Episode)) or 0)


# Upload sessions -------------------------------------------------------------------------


def open_upload_session(
    session: Session, manifest: EpisodeManifest, ttl: timedelta
) -> tuple[UploadSession, bool]:
    """The open, unexpired session for this episode, or a new one; True if it is new."""
    at = now()
    digest = manifest_digest(manifest)
    existing = session.scalars(
        select(UploadSession).where(
            UploadSession.episode_id == str(manifest.episode_id),
            UploadSession.status == "open",
            UploadSession.expires_at > at,
        )
    ).first()
    if existing is not None and existing.manifest_sha256 == digest:
        existing.expires_at = at + ttl
        return existing, False
    if existing is not None:
        existing.status = "expired"  # the robot re-recorded the episode under the same id
    upload = UploadSession(
        session_id=str(uuid.uuid4()),
        episode_id=str(manifest.episode_id),
        robot_id=manifest.robot_id,
        manifest=manifest.model_dump(mode="json"),
        manifest_sha256=digest,
        status="open",
        created_at=at,
        expires_at=at + ttl,
        committed_at=None,
    )
    session.add(upload)
    return upload, True


def get_upload_session(session: Session, session_id: str) -> UploadSession | None:
    return session.get(UploadSession, session_id)


def committed_session(session: Session, episode_id: str) -> UploadSession | None:
    return session.scalars(
        select(UploadSession).where(
            UploadSession.episode_id == episode_id, UploadSession.status == "committed"
        )
    ).first()


def lock_episode(session: Session, episode_id: str) -> None:
    """Holds the episode's lock until the transaction ends: commits, their rollbacks and the
    sweeper change an episode's final keys and its catalog row only while holding it."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        # The two-int4 key space never overlaps the single-bigint one (the retrain lock's).
        key = int.from_bytes(hashlib.sha256(episode_id.encode()).digest()[:4], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(EPISODE_LOCK_CLASS, key)))
    else:
        # SQLite has one writer at a time: any write, even of no row, takes the lock until commit.
        session.execute(
            update(UploadSession)
            .where(UploadSession.episode_id == episode_id)
            .values(status=UploadSession.status)
            .execution_options(synchronize_session=False)
        )


def open_sessions_of_episode(session: Session, episode_id: str) -> list[UploadSession]:
    return list(
        session.scalars(
            select(UploadSession).where(
                UploadSession.episode_id == episode_id, UploadSession.status == "open"
            )
        )
    )


def stale_upload_sessions(session: Session) -> list[UploadSession]:
    """Open sessions past their expiry (the sweeper ends them one at a time)."""
    return list(
        session.scalars(
            select(UploadSession).where(UploadSession.status == "open", UploadSession.expires_at <= now())
        )
    )


def open_session_ids(session: Session, session_ids: list[str]) -> set[str]:
    """Which of these session ids belong to sessions that are still open."""
    rows = session.scalars(
        select(UploadSession.session_id).where(
            UploadSession.session_id.in_(session_ids), UploadSession.status == "open"
        )
    )
    return set(rows)


def expire_upload_sessions(session: Session) -> list[UploadSession]:
    """Marks open sessions past their expiry as expired and returns them (their staged files can go)."""
    stale = list(
        session.scalars(
            select(UploadSession).where(UploadSession.status == "open", UploadSession.expires_at <= now())
        )
    )
    for upload in stale:
        upload.status = "expired"
    return stale
