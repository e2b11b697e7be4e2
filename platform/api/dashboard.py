"""The fleet dashboard: one static page (`/dashboard`) over a read API (`/v1/dashboard/...`).

Reading needs no token while WAMFLEET_DASHBOARD_ANONYMOUS_READ is on (else the admin token); robot
tokens never read it. The page's buttons call the admin routes themselves (POST /v1/retrains,
POST /v1/rollouts/{id}/{action}) with the admin token the operator typed in, so the dashboard adds
no second way to change anything.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from wamfleet.platform.api.auth import Viewer
from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.model_versions import describe_versions
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import datasets, queries, retrains
from wamfleet.platform.catalog.tables import (
    DatasetSnapshot,
    Episode,
    RetrainRun,
    Robot,
    RobotAssignment,
    Rollout,
)
from wamfleet.platform.contracts.curation import CuratedDataset, curated_key
from wamfleet.platform.contracts.dashboard import (
    CuratedView,
    DashboardCounts,
    DashboardInfo,
    DatasetView,
    EpisodeMedia,
    EpisodeVideo,
    ModelsView,
    RobotRow,
    RolloutView,
)
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, video_file
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.contracts.ids import SLUG_PATTERN
from wamfleet.platform.contracts.ingest import EpisodePage
from wamfleet.platform.contracts.limits import TIME_NOTE, Text, UtcDatetime
from wamfleet.platform.contracts.retrain import RetrainRunInfo
from wamfleet.platform.contracts.rollout import ACTIVE_STAGES
from wamfleet.platform.rollouts.evidence import gather_evidence
from wamfleet.platform.storage.base import ObjectNotFound, StorageError
from wamfleet.platform.storage.bundles import BundleIntegrityError, download_bundle

STATIC_DIR = Path(__file__).with_name("dashboard_static")
router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])
page = APIRouter(tags=["dashboard"])
State = Annotated[PlatformState, Depends(get_state)]
# Reading may need no token at all (WAMFLEET_DASHBOARD_ANONYMOUS_READ): say so in the schema.
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}, {"HTTPBearer": []}]}


def _read(*codes: int) -> dict[str, Any]:
    return {"responses": responses(401, *codes), "openapi_extra": OPTIONAL_AUTH}


@page.get("/dashboard", include_in_schema=False)
def dashboard_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/info", response_model=DashboardInfo, **_read())
def info(viewer: Viewer, state: State) -> DashboardInfo:
    with state.catalog.session() as s:
        counts = DashboardCounts(
            robots=s.scalar(select(func.count()).select_from(Robot)) or 0,
            episodes=queries.count_episodes(s),
            autonomous_episodes=s.scalar(
                select(func.count()).select_from(Episode).where(Episode.source == EpisodeSource.autonomous)
            )
            or 0,
            snapshots=s.scalar(select(func.count()).select_from(DatasetSnapshot)) or 0,
            retrains=s.scalar(select(func.count()).select_from(RetrainRun)) or 0,
            rollouts=s.scalar(select(func.count()).select_from(Rollout)) or 0,
        )
    return DashboardInfo(
        viewer=viewer,
        anonymous_read=state.settings.dashboard_anonymous_read,
        model_name=state.settings.registered_model,
        mlflow_ui_url=state.settings.mlflow_ui_url,
        counts=counts,
    )


@router.get("/robots", response_model=list[RobotRow], **_read())
def robots(_: Viewer, state: State) -> list[RobotRow]:
    with state.catalog.session() as s:
        episodes = dict(
            s.execute(select(Episode.robot_id, func.count()).group_by(Episode.robot_id)).tuples().all()
        )
        assignments = {a.robot_id: a for a in s.scalars(select(RobotAssignment))}
        rows = []
        for robot in s.scalars(select(Robot).order_by(Robot.robot_id)):
            base = queries.robot_info(robot)
            assigned = assignments.get(robot.robot_id)
            rows.append(
                RobotRow(
                    **base.model_dump(),
                    episodes=episodes.get(robot.robot_id, 0),
                    assigned_version=assigned.version if assigned else None,
                    assigned_stage=assigned.stage if assigned else None,
                    assigned_cohort=assigned.cohort if assigned else None,
                    assigned_at=assigned.assigned_at if assigned else None,
                )
            )
    return rows


@router.get("/episodes", response_model=EpisodePage, **_read(422))
def episodes(
    _: Viewer,
    state: State,
    robot_id: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    task: Annotated[Text | None, Query(max_length=200, description="Substring of the instruction.")] = None,
    success: bool | None = None,
    source: EpisodeSource | None = None,
    policy_version: Annotated[Text | None, Query(max_length=200)] = None,
    since: Annotated[UtcDatetime | None, Query(description=f"Recorded at or after ({TIME_NOTE}).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: uuid.UUID | None = None,
) -> EpisodePage:
    """Newest first; `cursor` is the previous page's next_cursor."""
    where = queries.EpisodeFilter(
        robot_id=robot_id,
        task=task,
        success=success,
        source=source,
        since=since,
        policy_version=policy_version,
    )
    with state.catalog.session() as s:
        return queries.episode_page(s, where, limit, after=str(cursor) if cursor else None, newest_first=True)


@router.get("/episodes/{episode_id}", response_model=EpisodeMedia, **_read(404, 422, 503))
def episode_media(episode_id: uuid.UUID, _: Viewer, state: State) -> EpisodeMedia:
    """The episode with a signed URL per camera video, for a <video> element to play."""
    with state.catalog.session() as s:
        episode = queries.get_episode(s, episode_id)
        if episode is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no episode {episode_id}")
        summary = queries.episode_summary(episode)
        manifest = EpisodeManifest.model_validate(episode.manifest)
    expiry = state.ingest.url_expiry
    videos = [
        EpisodeVideo(
            camera=camera.name,
            path=video_file(camera.name),
            width=camera.width,
            height=camera.height,
            url=state.store.presigned_get_url(manifest.prefix + video_file(camera.name), expiry),
        )
        for camera in manifest.cameras
    ]
    return EpisodeMedia(episode=summary, instruction=manifest.task, videos=videos)


MCAP_MEDIA_TYPE = "application/octet-stream"


_MCAP_READ = _read(404, 422, 503)
_MCAP_READ["responses"] = {
    200: {"content": {MCAP_MEDIA_TYPE: {}}, "description": "The episode as an MCAP file."}
} | _MCAP_READ["responses"]


@router.get("/episodes/{episode_id}/mcap", response_class=FileResponse, **_MCAP_READ)
def episode_mcap(episode_id: uuid.UUID, _: Viewer, state: State, cleanup: BackgroundTasks) -> FileResponse:
    """The episode as an MCAP file Foxglove opens (`wamfleet data export-mcap`'s output): cameras
    as the bundle's H.264 repackaged without decoding where it can be, else JPEG."""
    from wamfleet.fleet_agent.episode_format import BundleError
    from wamfleet.fleet_agent.mcap_export import export_mcap

    with state.catalog.session() as s:
        episode = queries.get_episode(s, episode_id)
        if episode is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no episode {episode_id}")
        robot_id = episode.robot_id
    work = Path(tempfile.mkdtemp(prefix="wamfleet-mcap-"))
    try:
        try:
            download_bundle(state.store, robot_id, episode_id, work / "bundle")
            out = export_mcap(work / "bundle", work / f"{episode_id}.mcap").path
        except ObjectNotFound:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"episode {episode_id}: its files are not in the store"
            ) from None
        except (BundleIntegrityError, BundleError, ValueError) as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"episode {episode_id}: cannot export it ({exc})"
            ) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # on success it goes once the file is sent
        raise
    cleanup.add_task(shutil.rmtree, work, ignore_errors=True)
    return FileResponse(out, media_type=MCAP_MEDIA_TYPE, filename=f"{episode_id}.mcap")


def _curated(state: PlatformState, run: RetrainRun) -> CuratedView:
    assert run.snapshot_hash and run.dataset_hash
    view = CuratedView(
        dataset_hash=run.dataset_hash, retrain_run_id=run.run_id, model_version=run.model_version
    )
    try:
        raw = state.store.get_bytes(curated_key(run.snapshot_hash, run.dataset_hash))
        view.report = CuratedDataset.model_validate_json(raw).report
    except ObjectNotFound:
        view.error = "the curated dataset is not in the object store"
    except ValidationError as exc:
        view.error = f"unreadable curated dataset: {describe_validation_error(exc)}"
    except StorageError as exc:
        view.error = f"object store: {exc}"
    return view


@router.get("/datasets", response_model=list[DatasetView], **_read(422))
def dataset_views(
    _: Viewer, state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[DatasetView]:
    """Snapshots newest first, each with the curations the retrains made of it (and their reports)."""
    with state.catalog.session() as s:
        snapshots = datasets.list_snapshots(s, limit=limit)
        runs = list(
            s.scalars(
                select(RetrainRun)
                .where(RetrainRun.snapshot_hash.in_([r.snapshot_hash for r in snapshots]))
                .where(RetrainRun.dataset_hash.is_not(None))
                .order_by(RetrainRun.created_at)
            )
        )
        views = [
            DatasetView(
                snapshot_hash=r.snapshot_hash,
                created_at=r.created_at,
                episode_count=r.episode_count,
                key=r.key,
            )
            for r in snapshots
        ]
    by_hash = {v.snapshot_hash: v for v in views}
    for run in runs:
        by_hash[run.snapshot_hash or ""].curated.append(_curated(state, run))
    return views


@router.get("/models", response_model=ModelsView, **_read())
def models(_: Viewer, state: State) -> ModelsView:
    return describe_versions(
        state.rollouts.registry.client, state.settings.registered_model, state.settings.mlflow_ui_url
    )


@router.get("/retrains", response_model=list[RetrainRunInfo], **_read(422))
def retrain_runs(
    _: Viewer, state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RetrainRunInfo]:
    with state.catalog.session() as s:
        return [retrains.run_info(r) for r in retrains.list_runs(s, limit=limit)]


@router.get("/rollouts", response_model=list[RolloutView], **_read(422))
def rollouts(_: Viewer, state: State, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[RolloutView]:
    """Newest first; an active rollout also carries the evidence its gates see right now."""
    controller = state.rollouts
    at = queries.now()
    model = controller.model_name
    with controller.catalog.session() as s:
        rows = s.scalars(select(Rollout).order_by(Rollout.created_at.desc()).limit(limit))
        return [
            RolloutView(
                rollout=controller.info(s, row),
                evidence=gather_evidence(s, row, model, at) if row.stage in ACTIVE_STAGES else None,
            )
            for row in rows
        ]
