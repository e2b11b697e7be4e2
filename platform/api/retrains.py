"""Retrain runs: the admin asks for one, lists them and reads one; the state's launcher starts them."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from wamfleet.platform.api.auth import Admin
from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import retrains
from wamfleet.platform.contracts.retrain import RetrainRequest, RetrainRunInfo, RetrainStatus
from wamfleet.platform.retrains.scheduler import LaunchFailed, RetrainActive, start_run

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["retrains"])
State = Annotated[PlatformState, Depends(get_state)]
RunId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


@router.post(
    "/retrains",
    status_code=status.HTTP_201_CREATED,
    response_model=RetrainRunInfo,
    responses=responses(400, 401, 403, 409, 422, 502),
)
def request_retrain(body: RetrainRequest, admin: Admin, state: State) -> RetrainRunInfo:
    """Records a manual retrain and launches it; 409 while another one is queued or running."""
    try:
        state.launcher.poll()  # a run that just ended must not count as active
    except Exception:
        log.exception("polling the %s retrain launcher failed", state.launcher.backend)
    try:
        return start_run(
            state.catalog,
            state.launcher,
            trigger="manual",
            reason=body.reason,
            requested_by=admin.name,
            params=body.params,
            force=body.force,
        )
    except RetrainActive as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    except LaunchFailed as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=str(exc)) from None


@router.get("/retrains", response_model=list[RetrainRunInfo], responses=responses(401, 403, 422))
def list_retrains(
    _: Admin,
    state: State,
    status_: Annotated[RetrainStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[RetrainRunInfo]:
    """Newest first; `?status=running` and friends filter."""
    with state.catalog.session() as s:
        return [retrains.run_info(r) for r in retrains.list_runs(s, limit=limit, status=status_)]


@router.get("/retrains/{run_id}", response_model=RetrainRunInfo, responses=responses(401, 403, 404, 422))
def get_retrain(run_id: RunId, _: Admin, state: State) -> RetrainRunInfo:
    with state.catalog.session() as s:
        row = retrains.get_run(s, run_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no retrain run {run_id!r}")
        return retrains.run_info(row)
