"""Dataset snapshots: the frozen, content-addressed input of a retrain.

A snapshot lists episodes by id and manifest sha256 (so a re-uploaded or altered episode is
a different snapshot) with the fields curation groups by. Its hash covers exactly those entries:
the same episodes always give the same hash, whatever query found them, and an edited entry
no longer matches it. Stored as
`datasets/<hash>/snapshot.json`; the validation result and curated datasets live beside it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from wamfleet.platform.contracts.episode import EpisodeSource
from wamfleet.platform.contracts.limits import INT8_MAX, Text, assume_utc

SNAPSHOT_FORMAT: Final = 1
DATASETS_PREFIX: Final = "datasets"


def snapshot_key(snapshot_hash: str) -> str:
    return f"{DATASETS_PREFIX}/{snapshot_hash}/snapshot.json"


def validation_key(snapshot_hash: str) -> str:
    return f"{DATASETS_PREFIX}/{snapshot_hash}/validation.json"


class SnapshotQuery(BaseModel):
    """Which committed episodes a snapshot takes (quarantined ones never)."""

    model_config = ConfigDict(extra="forbid")

    embodiment: Text | None = None
    tasks: list[Text] = Field(default_factory=list, description="exact task instructions; empty: all")
    sources: list[EpisodeSource] = Field(default_factory=list, description="empty: every source")
    since: Annotated[AwareDatetime, AfterValidator(assume_utc)] | None = None
    until: Annotated[AwareDatetime, AfterValidator(assume_utc)] | None = None
    max_episodes: int | None = Field(default=None, gt=0, le=INT8_MAX, description="newest first when capped")


class SnapshotEpisode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    episode_id: str
    robot_id: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    task: str
    embodiment: str
    embodiment_version: int
    site: str | None
    tags: dict[str, str]
    source: str
    has_actions: bool
    num_frames: int
    fps: float
    success: bool | None
    policy_version: str | None
    committed_at: AwareDatetime

    @property
    def bundle_prefix(self) -> str:
        return f"episodes/{self.robot_id}/{self.episode_id}/"


def content_hash(episodes: list[SnapshotEpisode]) -> str:
    """sha256 over every entry's canonical JSON (id, manifest sha256 and the indexed fields), sorted."""
    lines = sorted(e.model_dump_json() + "\n" for e in episodes)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


class DatasetSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = SNAPSHOT_FORMAT
    snapshot_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: AwareDatetime
    query: SnapshotQuery
    episodes: list[SnapshotEpisode]

    @model_validator(mode="after")
    def _hash_matches(self) -> DatasetSnapshot:
        if content_hash(self.episodes) != self.snapshot_hash:
            raise ValueError("snapshot_hash: does not match the episode list (altered snapshot?)")
        return self

    @classmethod
    def freeze(cls, query: SnapshotQuery, episodes: list[SnapshotEpisode], at: datetime) -> DatasetSnapshot:
        ordered = sorted(episodes, key=lambda e: e.episode_id)
        return cls(snapshot_hash=content_hash(ordered), created_at=at, query=query, episodes=ordered)


class EpisodeCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_id: str
    status: Literal["ok", "quarantined"]
    reason: str | None = None


class ValidationReport(BaseModel):
    """The decode check of a snapshot's episodes; curation reads only the `ok` ones."""

    model_config = ConfigDict(extra="forbid")

    snapshot_hash: str
    checked: int = Field(description="episodes decoded by this run (the rest were checked before)")
    results: list[EpisodeCheck]

    @property
    def ok_ids(self) -> set[str]:
        return {r.episode_id for r in self.results if r.status == "ok"}

    @property
    def quarantined(self) -> list[EpisodeCheck]:
        return [r for r in self.results if r.status == "quarantined"]
