"""Creating and launching retrain runs: on request (the API) and by the policy (`check_and_launch`).

"Is a run active? then create one" happens under one lock (a thread lock here, an advisory lock
on PostgreSQL) so two requests, or a request and the policy loop, never start two runs at once.
The row is committed before the launch: the runner reads its parameters from the catalog.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy.orm import Session

from wamfleet.platform.catalog import retrains
from wamfleet.platform.catalog.datasets import episodes_committed_since, last_snapshot
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import now as utc_now
from wamfleet.platform.contracts.retrain import RetrainParams, RetrainRunInfo
from wamfleet.platform.retrains.launcher import RetrainLauncher
from wamfleet.platform.retrains.policy import RetrainPolicy
from wamfleet.platform.settings import Settings

log = logging.getLogger(__name__)
POLICY_ACTOR = "policy"
_create_lock = threading.Lock()


class RetrainActive(Exception):
    """Another run is queued or running; the message names it."""

    def __init__(self, run: RetrainRunInfo) -> None:
        self.run = run
        super().__init__(
            f"retrain {run.run_id} is {run.status} (trigger {run.trigger}, created {run.created_at}); "
            "wait for it to finish or pass force=true"
        )


class LaunchFailed(Exception):
    """The run was recorded but its launcher failed; the run is marked failed with the error."""

    def __init__(self, run: RetrainRunInfo) -> None:
        self.run = run
        super().__init__(f"retrain {run.run_id} could not be launched on {run.backend}: {run.error}")


def _create(
    s: Session,
    launcher: RetrainLauncher,
    *,
    trigger: retrains.Trigger,
    reason: str,
    requested_by: str,
    params: RetrainParams,
) -> RetrainRunInfo:
    row = retrains.create_run(
        s, trigger=trigger, reason=reason, requested_by=requested_by, backend=launcher.backend, params=params
    )
    s.flush()
    return retrains.run_info(row)


def launch(catalog: Catalog, launcher: RetrainLauncher, run: RetrainRunInfo) -> RetrainRunInfo:
    """Launches a committed queued run and records its external id; raises LaunchFailed."""
    try:
        external_id = launcher.launch(run)
    except Exception as exc:
        log.exception("launching retrain %s on %s failed", run.run_id, launcher.backend)
        with catalog.session() as s:
            row = retrains.mark_finished(
                s,
                run.run_id,
                succeeded=False,
                error=f"launch on {launcher.backend} failed: {type(exc).__name__}: {exc}",
                actor=f"launcher:{launcher.backend}",
            )
            failed = retrains.run_info(row)
        raise LaunchFailed(failed) from exc
    with catalog.session() as s:
        current = retrains.get_run(s, run.run_id)
        assert current is not None
        if external_id is not None and current.external_id is None:  # the runner may have set it
            current = retrains.set_external_id(s, run.run_id, external_id)
        return retrains.run_info(current)


def start_run(
    catalog: Catalog,
    launcher: RetrainLauncher,
    *,
    trigger: retrains.Trigger,
    reason: str,
    requested_by: str,
    params: RetrainParams,
    force: bool = False,
) -> RetrainRunInfo:
    """Creates and launches a run; raises RetrainActive (unless force) or LaunchFailed."""
    with _create_lock, catalog.session() as s:
        retrains.lock_runs(s)
        active = retrains.active_run(s)
        if active is not None and not force:
            raise RetrainActive(retrains.run_info(active))
        run = _create(s, launcher, trigger=trigger, reason=reason, requested_by=requested_by, params=params)
    return launch(catalog, launcher, run)


def check_and_launch(
    catalog: Catalog,
    settings: Settings,
    launcher: RetrainLauncher,
    now: datetime | None = None,
    *,
    params: RetrainParams | None = None,
) -> RetrainRunInfo | None:
    """Reaps the launcher, asks the policy, and starts the run it decides on (if any)."""
    try:
        launcher.poll()
    except Exception:
        log.exception("polling the %s retrain launcher failed", launcher.backend)
    policy = RetrainPolicy.from_settings(settings)
    if not policy.enabled:
        return None
    at = now or utc_now()
    with _create_lock, catalog.session() as s:
        retrains.lock_runs(s)
        snapshot = last_snapshot(s)
        last = retrains.last_run(s)
        newest = snapshot.newest_committed_at if snapshot else None
        last_created = last.created_at if last else None
        # Count from the later of the snapshot's newest episode and the last run's creation:
        # a run that failed is not retried on the data it already failed on.
        baseline = max((t for t in (newest, last_created) if t is not None), default=None)
        decision = policy.decide(
            at,
            snapshot.created_at if snapshot else None,
            newest,
            episodes_committed_since(s, baseline),
            last_created,
            active=retrains.active_run(s) is not None,
        )
        if decision is None:
            return None
        run = _create(
            s,
            launcher,
            trigger=decision.trigger,
            reason=decision.reason,
            requested_by=POLICY_ACTOR,
            params=params or RetrainParams(),
        )
    log.info("retrain %s triggered by %s: %s", run.run_id, decision.trigger, decision.reason)
    try:
        return launch(catalog, launcher, run)
    except LaunchFailed as exc:
        return exc.run
