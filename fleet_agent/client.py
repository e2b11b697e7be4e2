"""The robot's HTTP client for the platform API, plus plain PUTs to presigned URLs.

Errors are sorted into what a robot should do about them: retry later (network, 5xx, 429),
give the episode up (other 4xx, with the platform's message), or stop (401: bad token).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.contracts.ingest import EpisodeSummary, UploadRequest, UploadTicket
from wamfleet.platform.contracts.rollout import PolicyAssignment

CHUNK = 64 * 1024
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class AgentError(Exception):
    pass


class TransientError(AgentError):
    """Worth retrying: the network or the server failed, not the request."""


class RejectedError(AgentError):
    """The platform refused the request; retrying the same request cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class AuthError(AgentError):
    """The robot's token is missing, wrong or revoked: nothing will upload until it is fixed."""


class UrlExpired(AgentError):
    """A presigned URL no longer works; ask the platform for fresh ones."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)[:1000]


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    if response.status_code in RETRYABLE_STATUS:
        raise TransientError(f"HTTP {response.status_code}: {_detail(response)}")
    if response.status_code == 401:
        raise AuthError(_detail(response))
    raise RejectedError(response.status_code, _detail(response))


class TokenBucket:
    """Caps average throughput at `rate` bytes/s with bursts of at most `burst` bytes."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, CHUNK)
        self._tokens = self.burst
        self._at = time.monotonic()

    def take(self, amount: int) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= amount or self._tokens >= self.burst:
                self._tokens -= amount
                return
            time.sleep((min(amount, self.burst) - self._tokens) / self.rate)


class PlatformClient:
    def __init__(self, api_url: str, token: str, timeout_s: float = 60.0) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._api = httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )
        # Presigned URLs carry their own authorisation; the robot token never goes to storage.
        self._objects = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._api.close()
        self._objects.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._api.request(method, path.lstrip("/"), **kwargs)
        except httpx.TransportError as exc:
            raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        _raise_for(response)
        return response

    def open_upload(self, manifest: EpisodeManifest) -> UploadTicket:
        body = UploadRequest(manifest=manifest).model_dump(mode="json")
        return UploadTicket.model_validate(self._request("POST", "v1/uploads", json=body).json())

    def commit(self, session_id: str) -> EpisodeSummary:
        return EpisodeSummary.model_validate(self._request("POST", f"v1/uploads/{session_id}/commit").json())

    def embodiment(self, name: str) -> EmbodimentSpec:
        return EmbodimentSpec.model_validate(self._request("GET", f"v1/embodiments/{name}").json())

    def policy_assignment(self) -> PolicyAssignment:
        """Which policy version (and endpoint) to run for the next whole episode; ask between episodes."""
        return PolicyAssignment.model_validate(self._request("GET", "v1/robots/me/policy").json())

    def put_file(
        self,
        url: str,
        path: Path,
        size: int,
        throttle: TokenBucket | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Streams a file to a presigned URL (absolute, or relative to the API), with the headers
        its ticket names (x-amz-checksum-sha256: the store refuses a body damaged on the way)."""

        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    if throttle is not None:
                        throttle.take(len(chunk))
                    yield chunk

        target = urljoin(self.api_url, url)
        sent = {"Content-Length": str(size), "Content-Type": "application/octet-stream", **(headers or {})}
        try:
            response = self._objects.put(target, content=body(), headers=sent)
        except httpx.TransportError as exc:
            raise TransientError(f"PUT {path.name}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 403:
            raise UrlExpired(f"PUT {path.name}: {_detail(response)}")
        _raise_for(response)
