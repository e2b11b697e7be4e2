"""Catalog tables (SQLAlchemy 2.0). Schema changes go through Alembic migrations only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from wamfleet.platform.contracts.rollout import Action, Stage


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite drops the zone; PostgreSQL keeps it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Embodiment(Base):
    __tablename__ = "embodiments"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Robot(Base):
    __tablename__ = "robots"

    robot_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    embodiment_name: Mapped[str] = mapped_column(String(63))
    site: Mapped[str | None] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]


EPISODE_FILTERS = (
    "robot_id",
    "embodiment_name",
    "source",
    "site",
    "policy_version",
    "success",
    "has_actions",
)


class Episode(Base):
    __tablename__ = "episodes"

    episode_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    robot_id: Mapped[str] = mapped_column(ForeignKey("robots.robot_id"))
    embodiment_name: Mapped[str] = mapped_column(String(63))
    embodiment_version: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(Text)
    site: Mapped[str | None] = mapped_column(String(63))
    source: Mapped[str] = mapped_column(String(32))
    fps: Mapped[float] = mapped_column(Float)
    num_frames: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(index=True)
    has_actions: Mapped[bool] = mapped_column(Boolean)
    policy_version: Mapped[str | None] = mapped_column(String(200))
    success: Mapped[bool | None] = mapped_column(Boolean)
    progress: Mapped[float | None] = mapped_column(Float)
    interventions: Mapped[int] = mapped_column(Integer, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]]
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    committed_at: Mapped[datetime] = mapped_column(index=True)

    # Search reads one page in id order under equality filters: an index on (filter, id) gives
    # that page straight from the index, however rare the value (benchmarks/catalog.py). The
    # instruction's substring search (`lower(task) LIKE '%...%'`) has a trigram index on
    # PostgreSQL; on SQLite the same index is a plain one, unused by that search.
    __table_args__ = (
        *(Index(f"ix_episodes_{column}_episode_id", column, "episode_id") for column in EPISODE_FILTERS),
        Index(
            "ix_episodes_task_trgm",
            func.lower(text("task")).label("task_lower"),
            postgresql_using="gin",
            postgresql_ops={"task_lower": "gin_trgm_ops"},
        ),
    )


class EpisodeTag(Base):
    """Tags in their own table so `key=value` search is one indexed query on any database."""

    __tablename__ = "episode_tags"

    episode_id: Mapped[str] = mapped_column(
        ForeignKey("episodes.episode_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_episode_tags_key_value", "key", "value"),)


class UploadSession(Base):
    __tablename__ = "upload_sessions"

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    episode_id: Mapped[str] = mapped_column(String(36), index=True)
    robot_id: Mapped[str] = mapped_column(ForeignKey("robots.robot_id"), index=True)
    manifest: Mapped[dict[str, Any]]
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | committed | expired
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    committed_at: Mapped[datetime | None]


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(80), index=True)
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]]


class DatasetSnapshot(Base):
    """A frozen, content-addressed list of episodes (its JSON lives in the object store)."""

    __tablename__ = "dataset_snapshots"

    snapshot_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    episode_count: Mapped[int] = mapped_column(Integer)
    newest_committed_at: Mapped[datetime | None]
    query: Mapped[dict[str, Any]]
    key: Mapped[str] = mapped_column(String(300))


class EpisodeValidation(Base):
    """The decode check of one episode; `quarantined` episodes stay stored but leave training."""

    __tablename__ = "episode_validations"

    episode_id: Mapped[str] = mapped_column(
        ForeignKey("episodes.episode_id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16), index=True)  # ok | quarantined
    reason: Mapped[str | None] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    checked_at: Mapped[datetime]


class RetrainRun(Base):
    """One retrain: who or what asked for it, where it runs, and what it produced."""

    __tablename__ = "retrain_runs"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | succeeded | failed
    trigger: Mapped[str] = mapped_column(String(16))  # manual | policy | schedule
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(80))
    backend: Mapped[str] = mapped_column(String(16))  # local | kfp
    params: Mapped[dict[str, Any]]
    external_id: Mapped[str | None] = mapped_column(String(200))
    snapshot_hash: Mapped[str | None] = mapped_column(String(64))
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(200))
    candidate: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Rollout(Base):
    """A candidate version on its way to the fleet; the stage survives a platform restart."""

    __tablename__ = "rollouts"

    rollout_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    candidate_version: Mapped[str] = mapped_column(String(64))
    champion_version: Mapped[str | None] = mapped_column(String(64))
    # Literal-typed for the type checker, plain VARCHAR in the database (as migrated).
    stage: Mapped[Stage] = mapped_column(String(16), index=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    awaiting_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(index=True)
    stage_started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class RolloutDecision(Base):
    """Every decision with the evidence it looked at (also in the audit log)."""

    __tablename__ = "rollout_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.rollout_id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    action: Mapped[Action] = mapped_column(String(16))
    from_stage: Mapped[Stage] = mapped_column(String(16))
    to_stage: Mapped[Stage] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(80))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class PolicyEndpoint(Base):
    """Where a model version is served (a local server process or an InferenceService)."""

    __tablename__ = "policy_endpoints"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    backend: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(500))
    handle: Mapped[str] = mapped_column(String(200))  # host:pid, or the InferenceService name
    started_at: Mapped[datetime]


class RobotAssignment(Base):
    """The last assignment each robot was given (at an episode boundary)."""

    __tablename__ = "robot_assignments"

    robot_id: Mapped[str] = mapped_column(ForeignKey("robots.robot_id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[str | None] = mapped_column(String(64))
    rollout_id: Mapped[str | None] = mapped_column(String(36))
    cohort: Mapped[str | None] = mapped_column(String(16))
    stage: Mapped[Stage | None] = mapped_column(String(16))
    assigned_at: Mapped[datetime]
