"""What the dashboard's read API answers (GET /v1/dashboard/...); the demo report reads the same."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from wamfleet.platform.contracts.curation import CurationReport
from wamfleet.platform.contracts.ingest import EpisodeSummary, RobotInfo
from wamfleet.platform.contracts.rollout import Evidence, RolloutInfo


class DashboardCounts(BaseModel):
    robots: int = 0
    episodes: int = 0
    autonomous_episodes: int = 0
    snapshots: int = 0
    retrains: int = 0
    rollouts: int = 0


class DashboardInfo(BaseModel):
    viewer: Literal["admin", "anonymous"] = Field(description="who the platform took the caller for")
    anonymous_read: bool = Field(description="viewing needs no token (WAMFLEET_DASHBOARD_ANONYMOUS_READ)")
    model_name: str
    mlflow_ui_url: str | None
    counts: DashboardCounts


class RobotRow(RobotInfo):
    episodes: int = 0
    assigned_version: str | None = Field(default=None, description="what it was last told to run")
    assigned_stage: str | None = None
    assigned_cohort: str | None = None
    assigned_at: datetime | None = None


class EpisodeVideo(BaseModel):
    camera: str
    path: str
    width: int
    height: int
    url: str = Field(description="signed, expiring GET URL of the object store")


class EpisodeMedia(BaseModel):
    episode: EpisodeSummary
    instruction: str
    videos: list[EpisodeVideo]


class CuratedView(BaseModel):
    """One curation of a snapshot, as the retrain that made it recorded."""

    dataset_hash: str
    retrain_run_id: str
    model_version: str | None
    report: CurationReport | None = None
    error: str | None = Field(default=None, description="why the report could not be read")


class DatasetView(BaseModel):
    snapshot_hash: str
    created_at: datetime
    episode_count: int
    key: str
    curated: list[CuratedView] = Field(default_factory=list)


class ModelVersionView(BaseModel):
    version: str
    aliases: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    run_id: str | None = None
    status: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="the run's latest metrics")
    lineage: dict[str, str] = Field(default_factory=dict, description="the version's wamfleet.* tags")
    mlflow_version_url: str | None = None
    mlflow_run_url: str | None = None


class ModelsView(BaseModel):
    model_name: str
    mlflow_ui_url: str | None
    versions: list[ModelVersionView] = Field(default_factory=list)
    error: str | None = Field(default=None, description="set when the registry could not be read")


class RolloutView(BaseModel):
    rollout: RolloutInfo
    evidence: Evidence | None = Field(default=None, description="the gates' inputs now (active rollouts)")
