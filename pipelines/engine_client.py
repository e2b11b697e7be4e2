"""A PolicyClient that calls a PolicyEngine in the same process: the serving engine, no network.

Pipelines evaluate candidate policies with it (the exact batching, sessions and normalisation
a served endpoint runs) without starting a server per version. It joins serving's engine to the
robot side's client interface, so it lives here, above both: serving never imports fleet_agent.
"""

from __future__ import annotations

import time

from numpy.typing import ArrayLike

from wamfleet.fleet_agent.policy_client import ActionChunk, PolicyClient
from wamfleet.platform.contracts.protocol import PolicyMetadata
from wamfleet.serving.engine import Engine, InferRequest


class EnginePolicyClient(PolicyClient):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def metadata(self) -> PolicyMetadata:
        return self.engine.metadata()

    def infer(
        self,
        session_id: str,
        instruction: str,
        images: ArrayLike,
        state: ArrayLike,
        frame_index: int | None = None,
    ) -> ActionChunk:
        started = time.perf_counter()
        result = self.engine.infer(
            InferRequest(session_id, instruction, images, state, frame_index=frame_index)
        )
        return ActionChunk(
            actions=result.actions,
            policy_version=result.policy_version,
            chunk_index=result.chunk_index,
            latency_s=time.perf_counter() - started,
            server_timing=result.timing.model_dump(),
        )

    def reset(self, session_id: str) -> None:
        self.engine.reset(session_id)

    def close(self) -> None:
        """The engine belongs to the caller; nothing to release here."""
