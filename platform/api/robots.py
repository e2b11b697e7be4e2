"""Robots and embodiments: registered by the admin; a robot's token is shown once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from wamfleet.platform.api.auth import Admin, AnyPrincipal
from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import queries
from wamfleet.platform.catalog.tables import Robot
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.ids import SLUG_PATTERN
from wamfleet.platform.contracts.ingest import RobotInfo, RobotRegistration, RobotToken
from wamfleet.platform.contracts.limits import INT4_MAX

router = APIRouter(prefix="/v1", tags=["robots"])
State = Annotated[PlatformState, Depends(get_state)]
# Ids are slugs: anything else cannot exist, and answers 422 naming the parameter.
RobotId = Annotated[str, Path(pattern=SLUG_PATTERN)]
EmbodimentName = Annotated[str, Path(pattern=SLUG_PATTERN)]


@router.post(
    "/embodiments",
    status_code=status.HTTP_201_CREATED,
    response_model=EmbodimentSpec,
    responses=responses(400, 401, 403, 409, 422),
)
def register_embodiment(spec: EmbodimentSpec, admin: Admin, state: State) -> EmbodimentSpec:
    """Registers an embodiment version; re-posting the identical spec is harmless."""
    with state.catalog.session() as s:
        try:
            created = queries.add_embodiment(s, spec)
        except ValueError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
        if created:
            queries.audit(s, admin.name, "embodiment.register", f"{spec.name}/v{spec.version}")
    return spec


@router.get("/embodiments", response_model=list[EmbodimentSpec], responses=responses(401))
def list_embodiments(_: AnyPrincipal, state: State) -> list[EmbodimentSpec]:
    with state.catalog.session() as s:
        return queries.list_embodiments(s)


@router.get("/embodiments/{name}", response_model=EmbodimentSpec, responses=responses(401, 404, 422))
def latest_embodiment(
    name: EmbodimentName,
    _: AnyPrincipal,
    state: State,
    version: Annotated[int | None, Query(ge=1, le=INT4_MAX)] = None,
) -> EmbodimentSpec:
    """The newest version of an embodiment, or `?version=N`."""
    with state.catalog.session() as s:
        spec = queries.get_embodiment(s, name, version)
    if spec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no embodiment {name!r}")
    return spec


@router.post(
    "/robots",
    status_code=status.HTTP_201_CREATED,
    response_model=RobotToken,
    responses=responses(400, 401, 403, 409, 422),
)
def register_robot(body: RobotRegistration, admin: Admin, state: State) -> RobotToken:
    """Registers a robot and returns its token. The token is shown only here."""
    try:
        with state.catalog.session() as s:
            if queries.get_embodiment(s, body.embodiment) is None:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    detail=f"embodiment: {body.embodiment!r} is not registered",
                )
            token = queries.add_robot(s, body.robot_id, body.embodiment, body.site, body.description)
            queries.audit(s, admin.name, "robot.register", body.robot_id, embodiment=body.embodiment)
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"robot_id: {body.robot_id!r} exists") from None
    return RobotToken(robot_id=body.robot_id, token=token)


def _robot(state: PlatformState, robot_id: str) -> Robot:
    with state.catalog.session() as s:
        robot = s.get(Robot, robot_id)
    if robot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no robot {robot_id!r}")
    return robot


@router.get("/robots", response_model=list[RobotInfo], responses=responses(401, 403))
def list_robots(_: Admin, state: State) -> list[RobotInfo]:
    with state.catalog.session() as s:
        return [queries.robot_info(r) for r in s.scalars(select(Robot).order_by(Robot.robot_id))]


@router.get("/robots/{robot_id}", response_model=RobotInfo, responses=responses(401, 403, 404, 422))
def get_robot(robot_id: RobotId, principal: AnyPrincipal, state: State) -> RobotInfo:
    if not principal.may_see(robot_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="robots may only read themselves")
    return queries.robot_info(_robot(state, robot_id))


@router.post("/robots/{robot_id}/token", response_model=RobotToken, responses=responses(401, 403, 404, 422))
def rotate_robot_token(robot_id: RobotId, admin: Admin, state: State) -> RobotToken:
    """Issues a new token; the previous one stops working at once."""
    with state.catalog.session() as s:
        robot = s.get(Robot, robot_id)
        if robot is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no robot {robot_id!r}")
        token = queries.rotate_token(s, robot)
        queries.audit(s, admin.name, "robot.token.rotate", robot_id)
    return RobotToken(robot_id=robot_id, token=token)


@router.delete(
    "/robots/{robot_id}/token",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422),
)
def revoke_robot_token(robot_id: RobotId, admin: Admin, state: State) -> None:
    with state.catalog.session() as s:
        robot = s.get(Robot, robot_id)
        if robot is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no robot {robot_id!r}")
        queries.revoke_token(s, robot)
        queries.audit(s, admin.name, "robot.token.revoke", robot_id)
