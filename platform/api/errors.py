"""Maps errors to HTTP responses with a message naming the problem, and declares them in OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from wamfleet.platform.catalog.ingest import IngestError
from wamfleet.platform.contracts.errors import ErrorBody, FieldError, ValidationErrorBody, json_safe


async def ingest_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IngestError)
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)


async def invalid_key(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def storage_error(_: Request, exc: Exception) -> JSONResponse:
    # The object store failed (unreachable, 5xx): the client should retry later.
    return JSONResponse(
        {"detail": f"object store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"}
    )


async def catalog_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The catalog refused a connection (too many clients, restarting), its pool was exhausted for
    the pool timeout, or it broke a transaction off (deadlock, serialization): nothing was
    recorded, and the same request later will succeed."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
    return JSONResponse(
        {"detail": f"catalog unavailable, retry: {reason}"}, status_code=503, headers={"Retry-After": "1"}
    )


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, except that the echoed input is always serializable: a NaN the client sent
    comes back as "nan" (the default handler fails to encode it and answers 500)."""
    assert isinstance(exc, RequestValidationError)
    issues = [
        FieldError(
            loc=[p if isinstance(p, int) else str(p) for p in error.get("loc", ())],
            msg=str(error.get("msg", "")),
            type=str(error.get("type", "")),
            input=json_safe(error.get("input")),
        )
        for error in exc.errors()
    ]
    body = ValidationErrorBody(detail=issues)
    return JSONResponse(body.model_dump(mode="json"), status_code=422)


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be read (not UTF-8), or an object key that is not allowed",
    401: "Missing, invalid or revoked bearer token",
    403: "The token may not do this (an admin route, a robot-only route, another robot's data)",
    404: "No such resource (or one this token may not see)",
    409: "Conflicts with the current state (exists already, another one is active)",
    410: "Gone (an expired upload session)",
    413: "Larger than allowed or declared",
    422: "The request is invalid: field errors (schema) or one message naming the field",
    502: "A backend the platform drives refused the request",
    503: "A dependency (the object store, the catalog) is unavailable; retry after Retry-After seconds",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route's error statuses, so the schema tells clients the truth."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {
            "model": ValidationErrorBody if code == 422 else ErrorBody,
            "description": _DESCRIPTIONS[code],
        }
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        out[code] = entry
    return out
