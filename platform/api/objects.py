"""Presigned object URLs of the local store, served by the platform (S3 serves its own).

A PUT is accepted only into an open upload session's staging key and never beyond the
size the manifest declared for that file. As S3 does with x-amz-checksum-sha256, the body is
hashed while it arrives and kept only if it matches the checksum signed into the URL (which the
PUT repeats in that header): a damaged body is a 400 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import mimetypes
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import FileResponse

from wamfleet.platform.api.errors import responses
from wamfleet.platform.api.state import PlatformState, get_state
from wamfleet.platform.contracts.checksums import CHECKSUM_HEADER, sha256_hex
from wamfleet.platform.storage.base import InvalidKey, ObjectNotFound
from wamfleet.platform.storage.local import LocalObjectStore

OBJECTS_PATH = "/v1/objects"
router = APIRouter(prefix=OBJECTS_PATH, tags=["objects"])
State = Annotated[PlatformState, Depends(get_state)]


def _local_store(state: PlatformState) -> LocalObjectStore:
    if not isinstance(state.store, LocalObjectStore):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail="objects are served by the S3 store, not the platform"
        )
    return state.store


class ChecksumMismatch(Exception):
    """The body that arrived is not the one whose SHA-256 the URL was signed for."""


def _verify(
    store: LocalObjectStore, method: str, key: str, expires: int, signature: str, checksum: str = ""
) -> None:
    try:
        store.verify_presigned(method, key, expires, signature, checksum)
    except InvalidKey as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    except PermissionError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from None


@router.put(
    "/{key:path}", status_code=status.HTTP_200_OK, responses=responses(400, 403, 404, 409, 413, 422, 503)
)
async def put_object(
    key: str, expires: int, signature: str, request: Request, state: State, checksum: str = ""
) -> dict[str, int]:
    store = _local_store(state)
    _verify(store, "PUT", key, expires, signature, checksum)
    limit = await anyio.to_thread.run_sync(state.ingest.staged_size_limit, key)
    if limit is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="no open upload session expects this file")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, detail=f"{declared} bytes exceeds the declared size {limit}"
        )
    expected = sha256_hex(checksum) if checksum else None
    if checksum and request.headers.get(CHECKSUM_HEADER) != checksum:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"{CHECKSUM_HEADER}: the PUT must carry the checksum its URL was signed for",
        )
    received = 0
    digest = hashlib.sha256()
    try:
        with store.open_write(key) as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, detail=f"body exceeds the declared size {limit}"
                    )
                digest.update(chunk)
                await anyio.to_thread.run_sync(f.write, chunk)
            if expected is not None and digest.hexdigest() != expected:
                raise ChecksumMismatch  # leaves the block: open_write keeps nothing
    except ChecksumMismatch:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"{CHECKSUM_HEADER}: the body's SHA-256 does not match; nothing was stored, send it again",
        ) from None
    return {"size": received}


@router.get(
    "/{key:path}",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The object's bytes"},
        **responses(400, 403, 404, 422),
    },
)
def get_object(key: str, expires: int, signature: str, state: State) -> FileResponse:
    store = _local_store(state)
    _verify(store, "GET", key, expires, signature)
    try:
        path = store.local_path(key)
    except ObjectNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no object {key!r}") from None
    # The real type lets a browser play a video straight from its signed URL (the dashboard).
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)
