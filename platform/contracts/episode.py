"""The episode manifest: the commit marker of a bundle and everything the catalog indexes.

A bundle lives under `episodes/<robot_id>/<episode_id>/` and holds `data.parquet`,
`videos/<camera>.mp4` per camera, and `manifest.json` written last. The manifest lists every
other file's size and sha256, so the platform can verify a bundle without decoding video.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from wamfleet.platform.contracts.embodiment import CameraSpec, EmbodimentRef
from wamfleet.platform.contracts.ids import SLUG_PATTERN, is_slug, is_uuid7
from wamfleet.platform.contracts.limits import INT4_MAX, INT8_MAX, Text, no_nul

MANIFEST_SCHEMA_VERSION: Final = 1
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.parquet"
MAX_TASK_CHARS = 1000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def video_file(camera: str) -> str:
    return f"videos/{camera}.mp4"


def bundle_prefix(robot_id: str, episode_id: uuid.UUID | str) -> str:
    return f"episodes/{robot_id}/{episode_id}/"


class EpisodeSource(StrEnum):
    """Where the behaviour in an episode came from; curation and evaluation treat them apart."""

    teleop = "teleop"
    scripted = "scripted"
    autonomous = "autonomous"
    human_video = "human_video"
    imported = "imported"


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    success: bool | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    interventions: int = Field(default=0, ge=0, le=INT4_MAX)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    path: Text = Field(min_length=1, max_length=255)
    size: int = Field(ge=0, le=INT8_MAX)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.fullmatch(value):
            raise ValueError("must be 64 lowercase hex characters")
        return value


class EpisodeManifest(BaseModel):
    """Every number is bounded by the catalog column it is indexed in (Integer is int4 on
    PostgreSQL), so a manifest the catalog cannot record is refused when the upload opens."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    episode_id: uuid.UUID
    robot_id: str = Field(pattern=SLUG_PATTERN)
    embodiment: EmbodimentRef
    task: Text = Field(min_length=1, max_length=MAX_TASK_CHARS)
    site: str | None = Field(default=None, pattern=SLUG_PATTERN)
    tags: dict[str, str] = Field(default_factory=dict)
    source: EpisodeSource = EpisodeSource.teleop
    fps: float = Field(gt=0, le=1000)
    num_frames: int = Field(ge=1, le=INT4_MAX)
    started_at: AwareDatetime
    cameras: list[CameraSpec] = Field(min_length=1)
    state_names: list[Text] = Field(default_factory=list)
    action_names: list[Text] = Field(default_factory=list)
    has_actions: bool
    policy_version: Text | None = Field(default=None, max_length=200)
    outcome: Outcome = Field(default_factory=Outcome)
    recorder: Text = Field(default="", max_length=200)
    files: list[FileEntry] = Field(min_length=2)

    @field_validator("episode_id")
    @classmethod
    def _v7(cls, value: uuid.UUID) -> uuid.UUID:
        if not is_uuid7(value):
            raise ValueError("must be a UUIDv7")
        return value

    @field_validator("task")
    @classmethod
    def _task_text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > 32:
            raise ValueError("at most 32 tags")
        for key, value in tags.items():
            if not is_slug(key):
                raise ValueError(f"tag key {key!r} must match {SLUG_PATTERN}")
            if len(value) > 200:
                raise ValueError(f"tag {key!r}: value longer than 200 characters")
            no_nul(value)
        return tags

    @field_validator("started_at")
    @classmethod
    def _in_utc_range(cls, value: datetime) -> datetime:
        # The catalog stores UTC; a time that cannot be converted would fail the insert instead.
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range once converted to UTC") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        cams = [c.name for c in self.cameras]
        if len(set(cams)) != len(cams):
            raise ValueError("cameras: names must be unique")
        if self.has_actions and not self.action_names:
            raise ValueError("has_actions is true but action_names is empty")
        if not self.has_actions and self.source is EpisodeSource.autonomous:
            raise ValueError("an autonomous episode must carry its actions")
        if self.source is EpisodeSource.autonomous and not self.policy_version:
            raise ValueError("an autonomous episode must name its policy_version")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files: paths must be unique")
        expected = {DATA_FILE, *(video_file(c) for c in cams)}
        if set(paths) != expected:
            missing = sorted(expected - set(paths))
            extra = sorted(set(paths) - expected)
            raise ValueError(f"files: missing {missing}, unexpected {extra}")
        if self.total_bytes > INT8_MAX:
            raise ValueError(f"files: {self.total_bytes} bytes in all, more than the catalog holds")
        try:
            self.ended_at.astimezone(UTC)
        except OverflowError:
            raise ValueError("started_at: the episode would end out of the datetime range") from None
        return self

    @property
    def prefix(self) -> str:
        return bundle_prefix(self.robot_id, self.episode_id)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration_s)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)
