"""Episode search and download links; robots see only their own episodes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from wamfleet.platform.api.auth import AnyPrincipal
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import queries
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest, EpisodeSource
from wamfleet.platform.contracts.ids import SLUG_PATTERN
from wamfleet.platform.contracts.ingest import DownloadLink, EpisodeDownload, EpisodePage, EpisodeSummary

router = APIRouter(prefix="/v1/episodes", tags=["episodes"])
State = Annotated[PlatformState, Depends(get_state)]


def _parse_tags(tags: list[str]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"tag: {tag!r} is not key=value"
            )
        parsed.append((key, value))
    return tuple(parsed)


@router.get("", response_model=EpisodePage)
def search(
    principal: AnyPrincipal,
    state: State,
    robot_id: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    embodiment: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    task: Annotated[str | None, Query(max_length=200, description="Substring of the instruction.")] = None,
    tag: Annotated[list[str], Query(description="key=value; repeat for several (all must match).")] = [],  # noqa: B006
    since: Annotated[datetime | None, Query(description="Recorded at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Recorded before (ISO 8601).")] = None,
    has_actions: bool | None = None,
    success: bool | None = None,
    source: EpisodeSource | None = None,
    site: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> EpisodePage:
    if principal.robot is not None:
        if robot_id not in (None, principal.robot.robot_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="robots may only list their own episodes")
        robot_id = principal.robot.robot_id
    if cursor is not None:
        try:
            cursor = str(uuid.UUID(cursor))
        except ValueError:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail="cursor: not a valid cursor"
            ) from None
    where = queries.EpisodeFilter(
        robot_id=robot_id,
        embodiment=embodiment,
        task=task,
        tags=_parse_tags(tag),
        since=since,
        until=until,
        has_actions=has_actions,
        success=success,
        source=source,
        site=site,
    )
    with state.catalog.session() as s:
        return queries.episode_page(s, where, limit, after=cursor)


def _visible_manifest(
    principal: AnyPrincipal, state: PlatformState, episode_id: uuid.UUID
) -> EpisodeManifest:
    with state.catalog.session() as s:
        episode = queries.get_episode(s, episode_id)
    # Another robot's episode answers exactly like a missing one: ids leak nothing.
    if episode is None or not principal.may_see(episode.robot_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no episode {episode_id}")
    return EpisodeManifest.model_validate(episode.manifest)


@router.get("/{episode_id}", response_model=EpisodeSummary)
def get(episode_id: uuid.UUID, principal: AnyPrincipal, state: State) -> EpisodeSummary:
    _visible_manifest(principal, state, episode_id)
    with state.catalog.session() as s:
        episode = queries.get_episode(s, episode_id)
        assert episode is not None
        return queries.episode_summary(episode)


@router.get("/{episode_id}/download", response_model=EpisodeDownload)
def download(episode_id: uuid.UUID, principal: AnyPrincipal, state: State) -> EpisodeDownload:
    """Signed, expiring download URLs for the manifest and every file of an episode."""
    manifest = _visible_manifest(principal, state, episode_id)
    expiry = state.ingest.url_expiry
    return EpisodeDownload(
        episode_id=manifest.episode_id,
        manifest=manifest,
        manifest_url=state.store.presigned_get_url(manifest.prefix + MANIFEST_FILE, expiry),
        files=[
            DownloadLink(
                path=f.path,
                size=f.size,
                sha256=f.sha256,
                url=state.store.presigned_get_url(manifest.prefix + f.path, expiry),
            )
            for f in manifest.files
        ],
    )
