"""Scripted policies served exactly like a WAM: same protocols, same routes, same validation.

A policy directory whose `policy.json` names a `kind` other than the WAM (for example the
simulated fleet's scripted expert, `fleet_agent/sim/scripted_policy.py`) is served through a
`ScriptedEngine`: a plain function of (session, instruction, state) -> action chunk behind the
engine interface both protocols call. Rollout tests use it for candidates of known quality,
so a statistical gate is checked on a real difference, end to end, without training a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from wamfleet.platform.contracts.protocol import PolicyMetadata, ServerTiming
from wamfleet.serving import metrics
from wamfleet.serving.engine import (
    MAX_INSTRUCTION_CHARS,
    MAX_STATE_ABS,
    InferRequest,
    InferResult,
    NonFiniteActions,
    RequestError,
)


class ChunkPolicy(Protocol):
    """What a scripted policy offers: its metadata and one chunk per observation."""

    def metadata(self, version: str) -> PolicyMetadata: ...

    def chunk(self, session_id: str, instruction: str, state: NDArray[np.float32]) -> NDArray[np.float32]: ...


# A policy.json kind -> how to build its ChunkPolicy from the policy directory's record.
ScriptedLoaders = dict[str, Callable[[dict[str, Any]], ChunkPolicy]]


class ScriptedEngine:
    """The engine interface around a ChunkPolicy; chunks are computed at once (no batching)."""

    def __init__(self, policy: ChunkPolicy, version: str) -> None:
        self.policy = policy
        self.version = version
        self._meta = policy.metadata(version)
        self._chunks: dict[tuple[str, str], int] = {}

    def metadata(self) -> PolicyMetadata:
        return self._meta

    def _validate(self, request: InferRequest) -> NDArray[np.float32]:
        if not isinstance(request.session_id, str) or not 0 < len(request.session_id) <= 200:
            raise RequestError("session_id: must be a non-empty string of at most 200 characters")
        if not isinstance(request.instruction, str) or not request.instruction.strip():
            raise RequestError("instruction: must be a non-empty string")
        if len(request.instruction) > MAX_INSTRUCTION_CHARS:
            raise RequestError(f"instruction: longer than {MAX_INSTRUCTION_CHARS} characters")
        images = np.asarray(request.images)
        if images.dtype != np.uint8 or images.ndim not in (4, 5):
            raise RequestError("images: expected uint8 [views, H, W, 3] or [T, views, H, W, 3]")
        state = np.asarray(request.state)
        if state.dtype.kind not in "iuf":
            raise RequestError(f"state: expected a numeric vector, got dtype {state.dtype}")
        state = state.astype(np.float64).reshape(-1)
        if state.shape != (self._meta.state_dim,):
            raise RequestError(f"state: expected {self._meta.state_dim} values, got {state.shape[0]}")
        if not np.all(np.isfinite(state)) or np.any(np.abs(state) > MAX_STATE_ABS):
            raise RequestError(f"state: values must be finite and within +-{MAX_STATE_ABS:g}")
        return state.astype(np.float32)

    def submit(self, request: InferRequest) -> Future[InferResult]:
        started = time.perf_counter()
        future: Future[InferResult] = Future()
        try:
            state = self._validate(request)
        except RequestError:
            metrics.REQUESTS.labels("bad_request").inc()
            raise
        key = (request.owner, request.session_id)
        if request.reset:
            self._chunks.pop(key, None)
        try:
            chunk = self.policy.chunk(request.session_id, request.instruction, state)
        except ValueError as exc:  # an input the policy cannot act on (an unknown task): the client's
            metrics.REQUESTS.labels("bad_request").inc()
            raise RequestError(str(exc)) from None
        actions = np.asarray(chunk, np.float32)
        if not np.all(np.isfinite(actions)):
            future.set_exception(NonFiniteActions("policy: the model produced non-finite actions"))
            return future
        self._chunks[key] = self._chunks.get(key, 0) + 1
        total = (time.perf_counter() - started) * 1000
        timing = ServerTiming(denoise_ms=total, total_ms=total)
        future.set_result(InferResult(actions, request.session_id, self._chunks[key], self.version, timing))
        metrics.REQUESTS.labels("ok").inc()
        return future

    def infer(self, request: InferRequest) -> InferResult:
        return self.submit(request).result()

    def reset(self, session_id: str, owner: str = "") -> None:
        self._chunks.pop((owner, session_id), None)

    def close(self) -> None:
        """Nothing runs in the background."""
