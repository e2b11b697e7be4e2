"""The KServe predictor: Open Inference Protocol v2 over the same engine as the websocket.

Inputs (by name): images UINT8 [views,H,W,3] or [T,views,H,W,3], state FP32 [state_dim],
instruction BYTES [1], session_id BYTES [1], reset BOOL [1] (optional), frame_index INT64 [1]
(optional: the video-rate index of the last image in the episode). Output: actions FP32
[chunk, action_dim]; the response parameters carry the policy version and per-stage timings.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from wamfleet.model.policy import load_policy
from wamfleet.serving.engine import InferRequest as EngineRequest
from wamfleet.serving.engine import NonFiniteActions, PolicyEngine, RequestError

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_policy(location: str) -> Path:
    """A local policy directory, or an MLflow URI (models:/name@alias, models:/name/3, runs:/...)."""
    if "://" not in location and not location.startswith(("models:/", "runs:/")):
        return Path(location)
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location))
    # A bare artifact directory, or an MLflow model logged by serving.mlflow_model.log_policy.
    candidates = [local, local / "policy", *sorted(p for p in (local / "artifacts").glob("*") if p.is_dir())]
    for candidate in candidates:
        if (candidate / "policy.json").exists():
            return candidate
    raise ValueError(f"policy: {location} holds no policy.json (looked in {[str(c) for c in candidates]})")


def _text(value: Any, name: str) -> str:
    item = np.asarray(value).reshape(-1)
    if item.size != 1:
        raise RequestError(f"{name}: expected one BYTES element, got {item.size}")
    raw = item[0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _integer(value: Any, name: str) -> int:
    item = np.asarray(value).reshape(-1)
    if item.size != 1 or item.dtype.kind not in "iu":
        raise RequestError(f"{name}: expected one INT64 element")
    return int(item[0])


class WAMPredictor(Model):
    def __init__(
        self,
        name: str,
        location: str,
        *,
        version: str | None = None,
        embodiment: str | None = None,
        device: str = "cpu",
        dtype: str = "fp32",
        max_session_bytes: int | None = None,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
    ) -> None:
        super().__init__(name)
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.location = location
        self.version = version
        self.embodiment = embodiment
        self.device = device
        self.dtype = DTYPES[dtype]
        self.max_session_bytes = max_session_bytes
        self.engine: PolicyEngine | None = None

    def load(self) -> bool:
        policy = load_policy(resolve_policy(self.location), self.device, self.dtype)
        version = self.version or policy.metadata.get("version") or policy.sha256[:12]
        self.engine = PolicyEngine(
            policy,
            version=str(version),
            embodiment=self.embodiment,
            max_session_bytes=self.max_session_bytes,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
        )
        self._warm_up()
        self.ready = True
        return True

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
        super().stop()

    def _warm_up(self) -> None:
        """One inference before reporting ready, so the first robot does not pay for lazy setup."""
        assert self.engine is not None
        meta = self.engine.metadata()
        images = np.zeros((len(meta.cameras), 64, 64, 3), np.uint8)
        state = np.zeros(meta.state_dim, np.float32)
        try:
            self.engine.infer(EngineRequest("__warmup__", "warm up", images, state))
        except NonFiniteActions:
            # The server still comes up: robots get an error for every chunk (never the NaNs),
            # and a rollout's guardrails roll such a version back on their evidence.
            log.warning("warm-up: the policy produced non-finite actions; every request will fail")
        self.engine.reset("__warmup__")

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        assert self.engine is not None
        try:
            inputs = {i.name: i for i in payload.inputs}
            for required in ("images", "state", "instruction", "session_id"):
                if required not in inputs:
                    raise RequestError(f"{required}: missing input")
            reset = (
                bool(np.asarray(inputs["reset"].as_numpy()).reshape(-1)[0]) if "reset" in inputs else False
            )
            request = EngineRequest(
                session_id=_text(inputs["session_id"].as_numpy(), "session_id"),
                instruction=_text(inputs["instruction"].as_numpy(), "instruction"),
                images=inputs["images"].as_numpy(),
                state=inputs["state"].as_numpy(),
                reset=reset,
                frame_index=_integer(inputs["frame_index"].as_numpy(), "frame_index")
                if "frame_index" in inputs
                else None,
            )
            # The engine batches across callers; await its future, keeping the event loop free.
            result = await asyncio.wrap_future(self.engine.submit(request))
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"inputs: {exc}") from None
        output = InferOutput(name="actions", shape=list(result.actions.shape), datatype="FP32")
        output.set_data_from_numpy(result.actions, binary_data=False)
        meta = self.engine.metadata()
        parameters = {
            # What the websocket sends on connect, so REST robots learn the rates and sizes too.
            "embodiment": meta.embodiment,
            "action_rate_hz": meta.action_rate_hz,
            "video_frames_per_chunk": meta.video_frames_per_chunk,
            "state_dim": meta.state_dim,
            "action_dim": meta.action_dim,
            "policy_version": result.policy_version,
            "session_id": result.session_id,
            "chunk_index": result.chunk_index,
            **{k: float(v) for k, v in result.timing.model_dump().items()},
        }
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[output], parameters=parameters
        )
