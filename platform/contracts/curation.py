"""Curation: the recipe that turns a validated snapshot into a training dataset, and its result.

A curated dataset names its snapshot, the recipe, every selected episode with the frame range
kept (idle stretches trimmed) and its split, and a report of what each filter removed. Its hash
covers snapshot, recipe and selection, so it is the lineage key of everything trained on it.
Stored as `datasets/<snapshot hash>/curated/<dataset hash>.json`.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

CURATED_FORMAT: Final = 1


def curated_key(snapshot_hash: str, dataset_hash: str) -> str:
    return f"datasets/{snapshot_hash}/curated/{dataset_hash}.json"


class CurationRecipe(BaseModel):
    """Thresholds of every filter; part of the dataset hash, so a changed recipe is a new dataset."""

    model_config = ConfigDict(extra="forbid")

    min_frames: int = Field(
        default=32, ge=1, description="episodes shorter than this (after trimming) are dropped"
    )
    holdout_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="episodes set aside for offline eval"
    )
    dedup_threshold: float = Field(
        default=0.995, gt=0, le=1, description="cosine similarity of near-duplicates"
    )
    max_per_environment: int = Field(
        default=0, ge=0, description="episodes kept per (task, environment); 0: no cap"
    )
    environment_tags: list[str] = Field(
        default_factory=lambda: ["layout-seed", "scene"],
        description="tags that name an environment, with site",
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


class CuratedDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = CURATED_FORMAT
    dataset_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    snapshot_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipe: CurationRecipe
    episodes: list[CuratedEpisode]
    report: dict[str, object] = Field(default_factory=dict)
