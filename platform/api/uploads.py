"""Upload sessions: a robot declares an episode, uploads its files, then commits it."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from wamfleet.platform.api.auth import RobotPrincipal
from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import queries
from wamfleet.platform.contracts.ingest import EpisodeSummary, UploadRequest, UploadTicket

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
State = Annotated[PlatformState, Depends(get_state)]


@router.post(
    "",
    response_model=UploadTicket,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": UploadTicket, "description": "The episode is already committed"},
        **responses(400, 401, 403, 409, 413, 422, 503),
    },
)
def open_upload(body: UploadRequest, robot: RobotPrincipal, state: State, response: Response) -> UploadTicket:
    """Opens (or resumes) the upload session of an episode; one upload URL per file.

    `received` marks files the platform already holds for this session, so a robot that
    restarts does not send them again. If the episode is already committed, status is
    `committed` and nothing needs uploading.
    """
    ticket = state.ingest.open_upload(robot, body.manifest)
    if ticket.status == "committed":
        response.status_code = status.HTTP_200_OK
    return ticket


@router.get("/{session_id}", response_model=UploadTicket, responses=responses(401, 403, 404, 422, 503))
def get_upload(session_id: uuid.UUID, robot: RobotPrincipal, state: State) -> UploadTicket:
    return state.ingest.get_ticket(robot, str(session_id))


@router.post(
    "/{session_id}/commit",
    response_model=EpisodeSummary,
    responses=responses(401, 403, 404, 409, 410, 422, 503),
)
def commit_upload(session_id: uuid.UUID, robot: RobotPrincipal, state: State) -> EpisodeSummary:
    """Verifies every file (size and sha256) and records the episode. Idempotent."""
    episode = state.ingest.commit(robot, str(session_id))
    return queries.episode_summary(episode)
