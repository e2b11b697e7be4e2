"""Catalog reads and writes of retrain runs: queued -> running -> succeeded | failed, audited.

A finished run never moves again, so whoever reports last (the runner, a launcher noticing a dead
process, a KFP poll) cannot overwrite the evidence the first one recorded.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from wamfleet.platform.catalog.db import advisory_xact_lock
from wamfleet.platform.catalog.queries import audit, now
from wamfleet.platform.catalog.tables import RetrainRun
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.contracts.retrain import RetrainParams, RetrainRunInfo, RetrainStatus

Trigger = Literal["manual", "policy", "schedule"]
Backend = Literal["local", "kfp"]
ACTIVE: tuple[RetrainStatus, ...] = ("queued", "running")
FINISHED: tuple[RetrainStatus, ...] = ("succeeded", "failed")
RUNNER = "retrain-runner"
MAX_ERROR_CHARS = 8000
# pg_advisory_xact_lock key that serializes "is one active? then create" across API replicas.
_LOCK_KEY = 0x7761_6D66_7274  # "wamfrt"


class RetrainRunError(ValueError):
    """A run that does not exist, or a transition a finished run refuses."""


def lock_runs(session: Session) -> None:
    """Serializes run creation for the rest of the transaction (PostgreSQL; SQLite has one writer)."""
    advisory_xact_lock(session, _LOCK_KEY)


def create_run(
    session: Session,
    *,
    trigger: Trigger,
    reason: str,
    requested_by: str,
    backend: Backend,
    params: RetrainParams,
) -> RetrainRun:
    run = RetrainRun(
        run_id=str(new_episode_id()),
        status="queued",
        trigger=trigger,
        reason=reason,
        requested_by=requested_by,
        backend=backend,
        params=params.model_dump(mode="json"),
        external_id=None,
        created_at=now(),
        started_at=None,
        finished_at=None,
    )
    session.add(run)
    audit(
        session, requested_by, "retrain.create", run.run_id, trigger=trigger, backend=backend, reason=reason
    )
    return run


def get_run(session: Session, run_id: str, *, lock: bool = False) -> RetrainRun | None:
    """`lock` holds the row for the rest of the transaction (PostgreSQL): with several API
    replicas, a runner and launchers, whoever reads a run to move it waits for anyone moving it."""
    return session.get(RetrainRun, run_id, with_for_update=lock or None)


def _run(session: Session, run_id: str) -> RetrainRun:
    run = get_run(session, run_id, lock=True)
    if run is None:
        raise RetrainRunError(f"no retrain run {run_id!r}")
    return run


def list_runs(session: Session, limit: int = 50, status: RetrainStatus | None = None) -> list[RetrainRun]:
    """Newest first (UUIDv7 ids break ties within one clock tick)."""
    stmt = select(RetrainRun)
    if status is not None:
        stmt = stmt.where(RetrainRun.status == status)
    stmt = stmt.order_by(RetrainRun.created_at.desc(), RetrainRun.run_id.desc()).limit(limit)
    return list(session.scalars(stmt))


def active_runs(session: Session, backend: Backend | None = None) -> list[RetrainRun]:
    """Queued or running runs, oldest first."""
    stmt = select(RetrainRun).where(RetrainRun.status.in_(ACTIVE))
    if backend is not None:
        stmt = stmt.where(RetrainRun.backend == backend)
    return list(session.scalars(stmt.order_by(RetrainRun.created_at, RetrainRun.run_id)))


def active_run(session: Session) -> RetrainRun | None:
    """The oldest queued or running run: the one a new request would wait for."""
    runs = active_runs(session)
    return runs[0] if runs else None


def last_run(session: Session) -> RetrainRun | None:
    """The most recently created run, whatever its status (the schedule counts from it)."""
    stmt = select(RetrainRun).order_by(RetrainRun.created_at.desc(), RetrainRun.run_id.desc()).limit(1)
    return session.scalars(stmt).first()


def set_external_id(session: Session, run_id: str, external_id: str) -> RetrainRun:
    """Records where a launched run lives (pid, KFP run id) without changing its status."""
    run = _run(session, run_id)
    run.external_id = external_id
    return run


def mark_running(
    session: Session, run_id: str, external_id: str | None = None, *, actor: str = RUNNER
) -> RetrainRun:
    """queued -> running (running again is a no-op apart from the external id)."""
    run = _run(session, run_id)
    if run.status in FINISHED:
        raise RetrainRunError(f"retrain run {run_id} already {run.status}; it cannot run again")
    if external_id is not None:
        run.external_id = external_id
    if run.status == "queued":
        run.status = "running"
        run.started_at = now()
        audit(session, actor, "retrain.start", run_id, external_id=run.external_id)
    return run


def mark_finished(
    session: Session,
    run_id: str,
    *,
    succeeded: bool,
    error: str | None = None,
    snapshot_hash: str | None = None,
    dataset_hash: str | None = None,
    model_version: str | None = None,
    candidate: bool | None = None,
    actor: str = RUNNER,
) -> RetrainRun:
    """Records the outcome and its evidence once; a finished run refuses to move."""
    run = _run(session, run_id)
    if run.status in FINISHED:
        raise RetrainRunError(f"retrain run {run_id} already {run.status}; its outcome is final")
    at = now()
    run.status = "succeeded" if succeeded else "failed"
    run.started_at = run.started_at or at
    run.finished_at = at
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = "..." + error[-MAX_ERROR_CHARS:]
    run.error = error
    run.snapshot_hash = snapshot_hash
    run.dataset_hash = dataset_hash
    run.model_version = model_version
    run.candidate = candidate
    audit(
        session,
        actor,
        "retrain.finish",
        run_id,
        status=run.status,
        error=error,
        snapshot_hash=snapshot_hash,
        dataset_hash=dataset_hash,
        model_version=model_version,
        candidate=candidate,
    )
    return run


def run_info(row: RetrainRun) -> RetrainRunInfo:
    return RetrainRunInfo(
        run_id=row.run_id,
        status=row.status,  # type: ignore[arg-type]
        trigger=row.trigger,  # type: ignore[arg-type]
        reason=row.reason,
        requested_by=row.requested_by,
        backend=row.backend,  # type: ignore[arg-type]
        params=RetrainParams.model_validate(row.params),
        external_id=row.external_id,
        snapshot_hash=row.snapshot_hash,
        dataset_hash=row.dataset_hash,
        model_version=row.model_version,
        candidate=row.candidate,
        error=row.error,
        created_at=row.created_at.isoformat(),
        started_at=row.started_at.isoformat() if row.started_at else None,
        finished_at=row.finished_at.isoformat() if row.finished_at else None,
    )
