"""Shadow mode on the robot: every observation also goes to the candidate; its chunk is only compared.

The robot executes what the primary (champion) endpoint answers, exactly as without a shadow.
A copy of each request goes to the shadow endpoint on a background thread, so a slow or broken
candidate never delays or changes what the robot does; when the shadow's chunk comes back it is
compared with the executed chunk for the same observation (mean squared difference over the
overlapping steps). The episode's tags then carry the comparison for the platform's gate.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from wamfleet.fleet_agent.policy_client import ActionChunk, PolicyClient, PolicyError
from wamfleet.platform.contracts.protocol import PolicyMetadata
from wamfleet.platform.contracts.rollout import (
    TAG_SHADOW_ACTION_MSE,
    TAG_SHADOW_ERRORS,
    TAG_SHADOW_LATENCY_P95_MS,
    TAG_SHADOW_REQUESTS,
    TAG_SHADOW_VERSION,
)


@dataclass
class ShadowStats:
    version: str
    requests: int = 0
    errors: int = 0
    squared_errors: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)

    def tags(self) -> dict[str, str]:
        tags = {
            TAG_SHADOW_VERSION: self.version,
            TAG_SHADOW_REQUESTS: str(self.requests),
            TAG_SHADOW_ERRORS: str(self.errors),
        }
        if self.squared_errors:
            tags[TAG_SHADOW_ACTION_MSE] = f"{float(np.mean(self.squared_errors)):.6g}"
        if self.latencies_s:
            tags[TAG_SHADOW_LATENCY_P95_MS] = f"{float(np.percentile(self.latencies_s, 95)) * 1000:.1f}"
        return tags


class ShadowedClient(PolicyClient):
    """The primary client, plus fire-and-forget copies of every request to `shadow`."""

    def __init__(self, primary: PolicyClient, shadow: PolicyClient, shadow_version: str) -> None:
        self.primary = primary
        self.shadow = shadow
        self.stats = ShadowStats(shadow_version)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wamfleet-shadow")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    def metadata(self) -> PolicyMetadata:
        return self.primary.metadata()

    def infer(
        self,
        session_id: str,
        instruction: str,
        images: ArrayLike,
        state: ArrayLike,
        frame_index: int | None = None,
    ) -> ActionChunk:
        images_copy, state_copy = np.array(images, copy=True), np.array(state, copy=True)
        chunk = self.primary.infer(session_id, instruction, images, state, frame_index)
        future = self._pool.submit(
            self._mirror, session_id, instruction, images_copy, state_copy, frame_index, chunk.actions
        )
        with self._lock:
            self._pending.append(future)
        return chunk

    def _mirror(
        self,
        session_id: str,
        instruction: str,
        images: np.ndarray,
        state: np.ndarray,
        frame_index: int | None,
        executed: np.ndarray,
    ) -> None:
        try:
            reply = self.shadow.infer(f"shadow-{session_id}", instruction, images, state, frame_index)
        except PolicyError:
            with self._lock:
                self.stats.requests += 1
                self.stats.errors += 1
            return
        steps = min(len(reply.actions), len(executed))
        dims = min(reply.actions.shape[1], executed.shape[1])
        diff = reply.actions[:steps, :dims] - executed[:steps, :dims]
        with self._lock:
            self.stats.requests += 1
            self.stats.latencies_s.append(reply.latency_s)
            self.stats.squared_errors.append(float(np.mean(diff**2)))

    def reset(self, session_id: str) -> None:
        self.primary.reset(session_id)
        with contextlib.suppress(PolicyError):
            self.shadow.reset(f"shadow-{session_id}")

    def drain(self, timeout_s: float = 10.0) -> ShadowStats:
        """Waits for the mirrored requests still in flight (an episode's end), then returns the stats."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.result(timeout=timeout_s)
            except TimeoutError:
                with self._lock:
                    self.stats.errors += 1
        return self.stats

    def close(self) -> None:
        """Stops mirroring; both clients belong to the caller (robots reuse them across episodes)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
