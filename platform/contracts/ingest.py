"""Wire messages of the upload API, shared by the robot agent and the platform."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wamfleet.platform.contracts.embodiment import EmbodimentRef
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, Outcome
from wamfleet.platform.contracts.ids import SLUG_PATTERN
from wamfleet.platform.contracts.limits import Text


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RobotRegistration(_Message):
    robot_id: str = Field(pattern=SLUG_PATTERN)
    embodiment: str = Field(pattern=SLUG_PATTERN)
    site: str | None = Field(default=None, pattern=SLUG_PATTERN)
    description: Text = Field(default="", max_length=500)


class RobotToken(_Message):
    """Returned once, when a robot is registered or its token rotated; only a hash is kept."""

    robot_id: str
    token: str


class RobotInfo(_Message):
    robot_id: str
    embodiment: str
    site: str | None
    description: str
    created_at: datetime
    last_seen_at: datetime | None
    revoked: bool


class UploadRequest(_Message):
    manifest: EpisodeManifest


class UploadTarget(_Message):
    path: str
    size: int
    method: Literal["PUT"] = "PUT"
    url: str = Field(description="Absolute (S3) or relative to the API base URL (local store).")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers the PUT must carry as given: x-amz-checksum-sha256, the file's SHA-256, "
        "which the store checks the body against (a damaged body is refused with a 400).",
    )
    received: bool = Field(description="The platform already holds this file for the session.")


class UploadTicket(_Message):
    session_id: uuid.UUID
    episode_id: uuid.UUID
    status: Literal["open", "committed"]
    expires_at: datetime
    files: list[UploadTarget]


class EpisodeSummary(_Message):
    episode_id: uuid.UUID
    robot_id: str
    embodiment: EmbodimentRef
    task: str
    site: str | None
    tags: dict[str, str]
    source: EpisodeSource
    fps: float
    num_frames: int
    started_at: datetime
    has_actions: bool
    policy_version: str | None
    outcome: Outcome
    total_bytes: int
    committed_at: datetime


class EpisodePage(_Message):
    items: list[EpisodeSummary]
    next_cursor: str | None


class DownloadLink(_Message):
    path: str
    size: int
    sha256: str
    url: str


class EpisodeDownload(_Message):
    episode_id: uuid.UUID
    manifest: EpisodeManifest
    manifest_url: str
    files: list[DownloadLink]
