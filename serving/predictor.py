"""The KServe predictor: Open Inference Protocol v2 over the same engine as the websocket.

Inputs (by name): images UINT8 [views,H,W,3] or [T,views,H,W,3], state FP32 [state_dim] (or,
instead, the inputs named by the embodiment's observation mapping, e.g. DROID's
`observation/exterior_image_1_left` UINT8 [H,W,3] and `observation/joint_position` FP32 [7]),
instruction BYTES [1], session_id BYTES [1], reset BOOL [1] (optional), frame_index INT64 [1]
(optional: the video-rate index of the last image in the episode), session_token BYTES [1]
(optional: the token of the session's first reply). Output: actions FP32 [chunk, action_dim];
the response parameters carry the policy version, the session token and per-stage timings.

A session belongs to its token: the engine keys sessions by (token, session_id), so a request
without the right token starts its own session and never reaches another client's. A replica
that never saw a token starts that session from the frames the request carries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from numpy.typing import NDArray

from wamfleet.model.policy import load_policy
from wamfleet.model.transformer import CompileSettings
from wamfleet.platform.contracts.embodiment import CANONICAL_IMAGES, CANONICAL_STATE
from wamfleet.platform.contracts.protocol import PolicyMetadata
from wamfleet.serving.engine import Engine, NonFiniteActions, PolicyEngine, RequestError, new_session_token
from wamfleet.serving.engine import InferRequest as EngineRequest
from wamfleet.serving.observation import check_mapping, map_observation, v2_inputs
from wamfleet.serving.scripted import ScriptedEngine, ScriptedLoaders

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


def _tensor(inputs: dict[str, Any], name: str) -> NDArray[Any]:
    """An input as numpy; data that does not fit its datatype or shape is a RequestError naming it."""
    tensor = inputs[name]
    datatype = str(tensor.datatype)[:20]
    try:
        return np.asarray(tensor.as_numpy())
    except OverflowError:
        raise RequestError(f"{name}: a value is out of range for {datatype}") from None
    except InvalidInput:
        raise RequestError(f"{name}: unsupported datatype {datatype!r}") from None
    except (ValueError, TypeError, IndexError, MemoryError, RecursionError):
        raise RequestError(
            f"{name}: data is not a {datatype} tensor of shape {list(tensor.shape)!s:.100}"
        ) from None


def _one(value: NDArray[Any], name: str, datatype: str) -> Any:
    item = value.reshape(-1)
    if item.size != 1:
        raise RequestError(f"{name}: expected one {datatype} element, got {item.size}")
    return item[0]


def _text(value: NDArray[Any], name: str) -> str:
    raw = _one(value, name, "BYTES")
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise RequestError(f"{name}: not UTF-8 text") from None
    return str(raw)


def _integer(value: NDArray[Any], name: str) -> int:
    if value.dtype.kind not in "iu":
        raise RequestError(f"{name}: expected one INT64 element")
    return int(_one(value, name, "INT64"))


def _flag(value: NDArray[Any], name: str) -> bool:
    if value.dtype.kind not in "biu":
        raise RequestError(f"{name}: expected one BOOL element")
    return bool(_one(value, name, "BOOL"))


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
        scripted: ScriptedLoaders | None = None,
        compile: CompileSettings | None = None,
    ) -> None:
        """`scripted`: how to build policies of other kinds (policy.json `kind`), e.g. the
        simulated fleet's scripted expert; the CLI, which may import the robot side, passes it.
        `compile`: the denoising step through torch.compile (see PolicyEngine)."""
        super().__init__(name)
        self.scripted = dict(scripted or {})
        self.max_batch = max_batch
        self.location = location
        self.version = version
        self.embodiment = embodiment
        self.device = device
        self.dtype = DTYPES[dtype]
        self.max_session_bytes = max_session_bytes
        self.compile = compile
        self.engine: Engine | None = None
        self.meta: PolicyMetadata | None = None  # the engine's metadata, read once at load

    def load(self) -> bool:
        directory = resolve_policy(self.location)
        record = json.loads((directory / "policy.json").read_text())
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind is not None:
            if kind not in self.scripted:
                raise ValueError(
                    f"policy.json: kind {kind!r} is not served here (known: {sorted(self.scripted)})"
                )
            version = self.version or (record.get("metadata") or {}).get("version") or kind
            self.engine = ScriptedEngine(self.scripted[kind](record), version=str(version))
            self.meta = check_mapping(self.engine.metadata())
            self.ready = True
            return True
        policy = load_policy(directory, self.device, self.dtype)
        version = self.version or policy.metadata.get("version") or policy.sha256[:12]
        engine = PolicyEngine(
            policy,
            version=str(version),
            embodiment=self.embodiment,
            max_session_bytes=self.max_session_bytes,
            max_batch=self.max_batch,
            compile=self.compile,
        )
        self.engine = engine
        self.meta = check_mapping(engine.metadata())  # a camera no key fills: refused at load
        self._warm_up(engine)
        self.ready = True
        return True

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
        super().stop()

    @staticmethod
    def _warm_up(engine: PolicyEngine) -> None:
        """Inference before reporting ready (alone and batched; with --compile, compiling), so
        the first robot does not pay for lazy setup."""
        try:
            engine.warm_up()
        except NonFiniteActions:
            # The server still comes up: robots get an error for every chunk (never the NaNs),
            # and a rollout's guardrails roll such a version back on their evidence.
            log.warning("warm-up: the policy produced non-finite actions; every request will fail")

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 model metadata: the observation mapping's inputs (see `observation.v2_inputs`)."""
        return v2_inputs(self.meta) if self.meta is not None else []

    def get_output_types(self) -> list[dict[str, Any]]:
        if self.meta is None:
            return []
        shape = [self.meta.actions_per_chunk, self.meta.action_dim]
        return [{"name": "actions", "datatype": "FP32", "shape": shape}]

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        assert self.engine is not None
        meta = self.meta or self.engine.metadata()
        try:
            inputs = {str(i.name): i for i in payload.inputs}
            for required in ("instruction", "session_id"):
                if required not in inputs:
                    raise RequestError(f"{required}: missing input")
            wanted = {CANONICAL_IMAGES, CANONICAL_STATE, *meta.observation.keys}
            images, state = map_observation(
                meta, {name: _tensor(inputs, name) for name in wanted if name in inputs}, "missing input"
            )
            # The session's owner: the token from an earlier reply, or a new one (a new session).
            token = (
                _text(_tensor(inputs, "session_token"), "session_token") if "session_token" in inputs else ""
            )
            request = EngineRequest(
                session_id=_text(_tensor(inputs, "session_id"), "session_id"),
                instruction=_text(_tensor(inputs, "instruction"), "instruction"),
                images=images,
                state=state,
                reset=_flag(_tensor(inputs, "reset"), "reset") if "reset" in inputs else False,
                frame_index=_integer(_tensor(inputs, "frame_index"), "frame_index")
                if "frame_index" in inputs
                else None,
                owner=token or new_session_token(),
            )
            # The engine batches across callers; await its future, keeping the event loop free.
            result = await asyncio.wrap_future(self.engine.submit(request))
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None
        output = InferOutput(name="actions", shape=list(result.actions.shape), datatype="FP32")
        output.set_data_from_numpy(result.actions, binary_data=False)
        parameters = {
            # What the websocket sends on connect, so REST robots learn the rates and sizes too.
            "embodiment": meta.embodiment,
            "action_rate_hz": meta.action_rate_hz,
            "video_frames_per_chunk": meta.video_frames_per_chunk,
            "state_dim": meta.state_dim,
            "action_dim": meta.action_dim,
            "policy_version": result.policy_version,
            "session_id": result.session_id,
            "session_token": request.owner,  # send it back as the session_token input
            "chunk_index": result.chunk_index,
            **{k: float(v) for k, v in result.timing.model_dump().items()},
        }
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[output], parameters=parameters
        )
