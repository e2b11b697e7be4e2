"""Rollouts: robots ask what to run next; the admin starts, follows, approves, pauses, resumes, aborts."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, status

from wamfleet.platform.api.auth import Admin, RobotPrincipal
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.contracts.rollout import PolicyAssignment, RolloutInfo, StartRollout
from wamfleet.platform.rollouts.controller import RolloutController, RolloutError

router = APIRouter(prefix="/v1", tags=["rollouts"])
State = Annotated[PlatformState, Depends(get_state)]


def _controller(state: PlatformState) -> RolloutController:
    return state.rollouts


def _http(exc: RolloutError) -> HTTPException:
    return HTTPException(exc.status, detail=str(exc))


@router.get("/robots/me/policy", response_model=PolicyAssignment)
def my_policy(robot: RobotPrincipal, state: State) -> PolicyAssignment:
    """The version and endpoint for the robot's next whole episode; ask only between episodes."""
    return _controller(state).assignment(robot)


@router.post("/rollouts", status_code=status.HTTP_201_CREATED, response_model=RolloutInfo)
async def start_rollout(body: StartRollout, admin: Admin, state: State) -> RolloutInfo:
    """Starts a rollout of a registered version (409 while another one is active)."""
    controller = _controller(state)
    try:
        return await anyio.to_thread.run_sync(controller.start, body, admin.name)
    except RolloutError as exc:
        raise _http(exc) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from None


@router.get("/rollouts", response_model=list[RolloutInfo])
def list_rollouts(
    _: Admin, state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RolloutInfo]:
    return _controller(state).list_rollouts(limit)


@router.get("/rollouts/{rollout_id}", response_model=RolloutInfo)
def get_rollout(rollout_id: str, _: Admin, state: State) -> RolloutInfo:
    try:
        return _controller(state).get(rollout_id)
    except RolloutError as exc:
        raise _http(exc) from None


@router.post("/rollouts/{rollout_id}/{action}", response_model=RolloutInfo)
async def act_on_rollout(
    rollout_id: str, action: Literal["approve", "pause", "resume", "abort"], admin: Admin, state: State
) -> RolloutInfo:
    """Manual decisions, audited like the automatic ones; 409 when the rollout's state forbids it."""
    try:
        return await anyio.to_thread.run_sync(_controller(state).manual, rollout_id, action, admin.name)
    except RolloutError as exc:
        raise _http(exc) from None
