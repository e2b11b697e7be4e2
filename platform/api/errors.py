"""Maps ingest errors to HTTP responses with a message naming the problem."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from wamfleet.platform.catalog.ingest import IngestError


async def ingest_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IngestError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code)


async def invalid_key(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def storage_error(_: Request, exc: Exception) -> JSONResponse:
    # The object store failed (unreachable, 5xx): the client should retry later.
    return JSONResponse(
        {"detail": f"object store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"}
    )
