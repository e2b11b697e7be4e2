"""Rollouts: robots ask what to run next; the admin starts, follows, approves, pauses, resumes, aborts."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from wamfleet.platform.api.auth import Admin, RobotPrincipal
from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.contracts.rollout import PolicyAssignment, RolloutInfo, StartRollout
from wamfleet.platform.rollouts.controller import RolloutController, RolloutError

router = APIRouter(prefix="/v1", tags=["rollouts"])
State = Annotated[PlatformState, Depends(get_state)]
RolloutId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def _controller(state: PlatformState) -> RolloutController:
    return state.rollouts


def _http(exc: RolloutError) -> HTTPException:
    return HTTPException(exc.status, detail=str(exc))


@router.get("/robots/me/policy", response_model=PolicyAssignment, responses=responses(401, 403))
def my_policy(robot: RobotPrincipal, state: State) -> PolicyAssignment:
    """The version and endpoint for the robot's next whole episode; ask only between episodes."""
    return _controller(state).assignment(robot)


@router.post(
    "/rollouts",
    status_code=status.HTTP_201_CREATED,
    response_model=RolloutInfo,
    responses=responses(400, 401, 403, 404, 409, 422),
)
async def start_rollout(body: StartRollout, admin: Admin, state: State) -> RolloutInfo:
    """Starts a rollout of a registered version (409 while another one is active)."""
    controller = _controller(state)
    try:
        return await anyio.to_thread.run_sync(controller.start, body, admin.name)
    except RolloutError as exc:
        raise _http(exc) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None


@router.get("/rollouts", response_model=list[RolloutInfo], responses=responses(401, 403, 422))
def list_rollouts(
    _: Admin, state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RolloutInfo]:
    return _controller(state).list_rollouts(limit)


@router.get("/rollouts/{rollout_id}", response_model=RolloutInfo, responses=responses(401, 403, 404, 422))
def get_rollout(rollout_id: RolloutId, _: Admin, state: State) -> RolloutInfo:
    try:
        return _controller(state).get(rollout_id)
    except RolloutError as exc:
        raise _http(exc) from None


@router.post(
    "/rollouts/{rollout_id}/{action}",
    response_model=RolloutInfo,
    responses=responses(401, 403, 404, 409, 422),
)
async def act_on_rollout(
    rollout_id: RolloutId, action: Literal["approve", "pause", "resume", "abort"], admin: Admin, state: State
) -> RolloutInfo:
    """Manual decisions, audited like the automatic ones; 409 when the rollout's state forbids it."""
    try:
        return await anyio.to_thread.run_sync(_controller(state).manual, rollout_id, action, admin.name)
    except RolloutError as exc:
        raise _http(exc) from None
