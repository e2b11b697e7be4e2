"""Bearer-token principals: the admin (token from settings) or one robot (hashed token in the catalog)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import queries
from wamfleet.platform.catalog.tables import Robot

ViewerKind = Literal["admin", "anonymous"]
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <admin or robot token>`")
LAST_SEEN_RESOLUTION = timedelta(seconds=30)


@dataclass(frozen=True)
class Principal:
    robot: Robot | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.robot is None

    @property
    def name(self) -> str:
        return "admin" if self.robot is None else f"robot:{self.robot.robot_id}"

    def may_see(self, robot_id: str) -> bool:
        return self.robot is None or self.robot.robot_id == robot_id


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    state: Annotated[PlatformState, Depends(get_state)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("missing bearer token")
    token = credentials.credentials
    admin = state.admin_token
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(robot=None)
    with state.catalog.session() as s:
        robot = queries.robot_for_token(s, token)
        if robot is None:
            raise _unauthorized("invalid or revoked token")
        at = queries.now()
        if robot.last_seen_at is None or at - robot.last_seen_at > LAST_SEEN_RESOLUTION:
            robot.last_seen_at = at
    return Principal(robot=robot)


def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this route needs the admin token")
    return principal


def require_robot(principal: Annotated[Principal, Depends(authenticate)]) -> Robot:
    if principal.robot is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this route is for robots (use a robot token)")
    return principal.robot


def authenticate_viewer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    state: Annotated[PlatformState, Depends(get_state)],
) -> ViewerKind:
    """The dashboard's reader: the admin, or anyone when anonymous reading is on; never a robot."""
    if credentials is None:
        if state.settings.dashboard_anonymous_read:
            return "anonymous"
        raise _unauthorized("the dashboard needs the admin token (WAMFLEET_DASHBOARD_ANONYMOUS_READ is off)")
    admin = state.admin_token
    if admin and hmac.compare_digest(credentials.credentials.encode(), admin.encode()):
        return "admin"
    raise _unauthorized("the dashboard accepts only the admin token")


AnyPrincipal = Annotated[Principal, Depends(authenticate)]
Viewer = Annotated[ViewerKind, Depends(authenticate_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]
RobotPrincipal = Annotated[Robot, Depends(require_robot)]
