"""Episode search and download links; robots see only their own episodes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from wamfleet.platform.api.auth import AnyPrincipal
from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.catalog import queries
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest, EpisodeSource
from wamfleet.platform.contracts.ids import SLUG_PATTERN, is_slug
from wamfleet.platform.contracts.ingest import DownloadLink, EpisodeDownload, EpisodePage, EpisodeSummary
from wamfleet.platform.contracts.limits import TIME_NOTE, Text, UtcDatetime

router = APIRouter(prefix="/v1/episodes", tags=["episodes"])
State = Annotated[PlatformState, Depends(get_state)]


def _parse_tags(tags: list[str]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not is_slug(key) or len(value) > 200:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"tag: {tag!r} is not key=value (a tag key, a value of at most 200 characters)",
            )
        parsed.append((key, value))
    return tuple(parsed)


@router.get("", response_model=EpisodePage, responses=responses(401, 403, 422))
def search(
    principal: AnyPrincipal,
    state: State,
    robot_id: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    embodiment: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    task: Annotated[Text | None, Query(max_length=200, description="Substring of the instruction.")] = None,
    tag: Annotated[list[Text], Query(description="key=value; repeat for several (all must match).")] = [],  # noqa: B006
    since: Annotated[UtcDatetime | None, Query(description=f"Recorded at or after ({TIME_NOTE}).")] = None,
    until: Annotated[UtcDatetime | None, Query(description=f"Recorded before ({TIME_NOTE}).")] = None,
    has_actions: bool | None = None,
    success: bool | None = None,
    source: EpisodeSource | None = None,
    site: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[uuid.UUID | None, Query(description="next_cursor of the previous page.")] = None,
) -> EpisodePage:
    """Episodes in recording order, one page at a time; robots see only their own."""
    if principal.robot is not None:
        if robot_id not in (None, principal.robot.robot_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="robots may only list their own episodes")
        robot_id = principal.robot.robot_id
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
        return queries.episode_page(s, where, limit, after=str(cursor) if cursor else None)


def _visible_manifest(
    principal: AnyPrincipal, state: PlatformState, episode_id: uuid.UUID
) -> EpisodeManifest:
    with state.catalog.session() as s:
        episode = queries.get_episode(s, episode_id)
    # Another robot's episode answers exactly like a missing one: ids leak nothing.
    if episode is None or not principal.may_see(episode.robot_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no episode {episode_id}")
    return EpisodeManifest.model_validate(episode.manifest)


@router.get("/{episode_id}", response_model=EpisodeSummary, responses=responses(401, 404, 422))
def get(episode_id: uuid.UUID, principal: AnyPrincipal, state: State) -> EpisodeSummary:
    _visible_manifest(principal, state, episode_id)
    with state.catalog.session() as s:
        episode = queries.get_episode(s, episode_id)
        assert episode is not None
        return queries.episode_summary(episode)


@router.get("/{episode_id}/download", response_model=EpisodeDownload, responses=responses(401, 404, 422, 503))
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
