"""Curation: the recipe that turns a validated snapshot into a training dataset, and its result.

A curated dataset names its snapshot, the recipe, every selected episode with the frame range
kept (idle stretches trimmed) and its split, and a report of what each filter removed. Its hash
covers snapshot, recipe and selection, so it is the lineage key of everything trained on it.
Stored as `datasets/<snapshot hash>/curated/<dataset hash>.json`.

The recipe holds every threshold (docs/pipelines.md explains each filter and how its default
was chosen against real Meta-World expert episodes): a changed threshold is a new dataset.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from wamfleet.platform.contracts.limits import INT8_MAX, Text

CURATED_FORMAT: Final = 1

DropReason = Literal[
    "unreadable",  # the bundle cannot be read (a file missing, truncated or malformed)
    "frame_count_mismatch",  # snapshot, manifest, data.parquet and videos disagree on the frame count
    "timestamp_gap",  # timestamps not increasing, or one gap longer than max_gap_seconds
    "dropped_frames",  # too many frame intervals missing overall (deltas vs 1/fps)
    "non_finite",  # NaN or inf in states or actions
    "action_spike",  # a jump between consecutive actions far beyond the episode's robust scale
    "too_short",  # fewer than min_frames left after idle trimming
    "black_frames",  # too many frames too dark to show anything
    "frozen_frames",  # a camera's picture stands still while the robot moves
]
DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)


def curated_key(snapshot_hash: str, dataset_hash: str) -> str:
    return f"datasets/{snapshot_hash}/curated/{dataset_hash}.json"


FailedEpisodes = Literal["world_model", "imitate"]


def actions_are_targets(success: bool | None, failed_episodes: FailedEpisodes) -> bool:
    """Whether an episode's own actions are for the policy to learn (and to be evaluated on):
    not a failed one under outcome-aware training ("world_model")."""
    return failed_episodes == "imitate" or success is not False


class CurationRecipe(BaseModel):
    """Thresholds of every filter; part of the dataset hash, so a changed recipe is a new dataset."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_frames: int = Field(
        default=32, ge=1, le=INT8_MAX, description="episodes shorter than this (after trimming) are dropped"
    )
    holdout_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="episodes set aside for offline eval"
    )
    dedup_threshold: float = Field(
        default=0.94,
        gt=0,
        le=1,
        description="cosine similarity of near-duplicates (same task and embodiment)",
    )
    max_per_environment: int = Field(
        default=0, ge=0, le=INT8_MAX, description="episodes kept per (task, environment); 0: no cap"
    )
    max_per_task: int = Field(
        default=0,
        ge=0,
        le=INT8_MAX,
        description="episodes kept per task, round-robin over environments; 0: no cap",
    )
    environment_tags: list[Text] = Field(
        default_factory=lambda: ["layout-seed", "scene"],
        description="tags that name an environment, with site",
    )
    max_gap_seconds: float = Field(
        default=0.5, gt=0, description="longest allowed interval between consecutive timestamps"
    )
    max_dropped_fraction: float = Field(
        default=0.05, ge=0, le=1, description="frames missing (from timestamp deltas vs 1/fps) / frames"
    )
    black_level: float = Field(
        default=16.0, ge=0, le=255, description="a frame whose mean luma is below this is black"
    )
    max_black_fraction: float = Field(
        default=0.05, ge=0, le=1, description="black frames allowed per camera, as a fraction of frames"
    )
    frozen_tolerance: float = Field(
        default=6.0,
        gt=0,
        description="gray levels a 4x4-pixel block may drift from the first frame of a still stretch",
    )
    max_frozen_seconds: float = Field(
        default=1.0, gt=0, description="longest still stretch of one camera while the robot moves"
    )
    spike_factor: float = Field(
        default=10.0, gt=0, description="action jump / the action's robust scale that counts as a spike"
    )
    idle_tolerance: float = Field(
        default=0.01,
        ge=0,
        description="per-frame change (fraction of the episode's range) below which state/action is idle",
    )
    failed_episodes: FailedEpisodes = Field(
        default="world_model",
        description=(
            "what an episode whose outcome is a failure trains: 'world_model' keeps its video (the "
            "world model learns what happened) and masks its actions from the action loss, except "
            "frames flagged as interventions (a person's corrections); 'imitate' trains its actions too"
        ),
    )
    embedding_frames: int = Field(
        default=16, ge=2, le=INT8_MAX, description="frames per camera in the embedding"
    )
    thumbnail_size: int = Field(
        default=16, ge=2, le=INT8_MAX, description="side of the grayscale embedding thumbnails"
    )


class CuratedEpisode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    episode_id: str
    robot_id: str
    task: str
    embodiment: str
    environment: str
    video_only: bool
    start: int = Field(ge=0, description="first frame kept")
    stop: int = Field(gt=0, description="one past the last frame kept")
    split: Literal["train", "holdout"]


def _no_drops() -> dict[str, int]:
    return {reason: 0 for reason in DROP_REASONS}


class DroppedEpisode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    episode_id: str
    reason: DropReason = Field(description="the first filter that failed")
    detail: str
    other_reasons: list[DropReason] = Field(default_factory=list)


class Duplicate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    episode_id: str = Field(description="the episode removed")
    duplicate_of: str = Field(description="the episode kept in its place")
    similarity: float


class GroupCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episodes_in: int = Field(default=0, ge=0, description="validated episodes curation considered")
    kept: int = Field(default=0, ge=0)
    frames_kept: int = Field(default=0, ge=0)


class CurationReport(BaseModel):
    """What each step removed; episodes_in = not_validated + dropped + duplicates + capped + kept."""

    model_config = ConfigDict(extra="forbid")

    episodes_in: int = Field(default=0, ge=0, description="episodes in the snapshot")
    not_validated: int = Field(default=0, ge=0, description="skipped: validation did not find them ok")
    analysed: int = Field(default=0, ge=0)
    dropped: dict[str, int] = Field(default_factory=_no_drops, description="by the first failing filter")
    dropped_episodes: list[DroppedEpisode] = Field(default_factory=list)
    duplicates_removed: int = Field(default=0, ge=0)
    duplicates: list[Duplicate] = Field(default_factory=list)
    capped_per_environment: int = Field(default=0, ge=0)
    capped_per_task: int = Field(default=0, ge=0)
    kept: int = Field(default=0, ge=0)
    video_only_kept: int = Field(default=0, ge=0)
    failed_kept: int = Field(
        default=0, ge=0, description="kept episodes whose outcome is a failure (see failed_episodes)"
    )
    train: int = Field(default=0, ge=0)
    holdout: int = Field(default=0, ge=0)
    frames_in: int = Field(default=0, ge=0, description="frames of the analysed episodes")
    frames_trimmed: int = Field(default=0, ge=0, description="idle frames cut from the kept episodes")
    frames_kept: int = Field(default=0, ge=0)
    per_task: dict[str, GroupCounts] = Field(default_factory=dict)
    per_embodiment: dict[str, GroupCounts] = Field(default_factory=dict)
    environments: int = Field(default=0, ge=0, description="distinct (task, environment) pairs kept")


class CuratedDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = CURATED_FORMAT
    dataset_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    snapshot_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipe: CurationRecipe
    episodes: list[CuratedEpisode]
    report: CurationReport = Field(default_factory=CurationReport)

    @property
    def train(self) -> list[CuratedEpisode]:
        return [e for e in self.episodes if e.split == "train"]

    @property
    def holdout(self) -> list[CuratedEpisode]:
        return [e for e in self.episodes if e.split == "holdout"]


def dataset_hash(snapshot_hash: str, recipe: CurationRecipe, episodes: list[CuratedEpisode]) -> str:
    """sha256 over canonical JSON of (snapshot hash, recipe, selection in episode-id order)."""
    body = {
        "format_version": CURATED_FORMAT,
        "snapshot_hash": snapshot_hash,
        "recipe": recipe.model_dump(mode="json"),
        "episodes": [e.model_dump(mode="json") for e in sorted(episodes, key=lambda e: e.episode_id)],
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
