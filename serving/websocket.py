"""The openpi-compatible websocket endpoint, served on the predictor's own HTTP port.

On connect the server sends the policy metadata; every message is an observation dict
(msgpack-numpy) with `endpoint` "infer" (default) or "reset" and a `session_id`. Replies are
msgpack dicts; bad input is answered with a text frame naming the input (the openpi client
raises it as an error) and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from wamfleet.platform.contracts.protocol import MAX_MESSAGE_BYTES, packb, unpackb
from wamfleet.serving.engine import InferRequest, PolicyEngine, RequestError

log = logging.getLogger(__name__)


def _text_field(obs: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = obs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _request_from(obs: dict[str, Any]) -> InferRequest:
    session = _text_field(obs, "session_id", "default")
    instruction = _text_field(obs, "instruction") or _text_field(obs, "prompt")
    reset = obs.get("reset", False)
    if not isinstance(reset, bool | int | np.bool_):
        raise RequestError(f"reset: expected a boolean, got {type(reset).__name__}")
    for name, value in (
        ("images", obs.get("images")),
        ("state", obs.get("state")),
        ("instruction", instruction),
    ):
        if value is None:
            raise RequestError(f"{name}: missing from the observation")
    return InferRequest(
        session_id=session or "default",
        instruction=instruction or "",
        images=obs["images"],
        state=obs["state"],
        reset=bool(reset),
        frame_index=obs.get("frame_index"),
    )


def policy_websocket_router(engine: Callable[[], PolicyEngine], api_key: str | None = None) -> APIRouter:
    router = APIRouter()

    @router.websocket("/")
    async def policy(ws: WebSocket) -> None:
        if api_key is not None:
            sent = ws.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {api_key}".encode()):
                await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or wrong Api-Key")
                return
        await ws.accept()
        eng = engine()
        await ws.send_bytes(packb(eng.metadata().model_dump()))
        try:
            while True:
                data = await ws.receive_bytes()
                reply = await _answer(eng, data)
                if isinstance(reply, str):
                    await ws.send_text(reply)
                else:
                    await ws.send_bytes(reply)
        except WebSocketDisconnect:
            return

    return router


async def _answer(engine: PolicyEngine, data: bytes) -> bytes | str:
    if len(data) > MAX_MESSAGE_BYTES:
        return f"message: {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
    try:
        obs = unpackb(data)
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is the client's error
        return f"message: not msgpack-numpy ({type(exc).__name__}: {exc})"
    if not isinstance(obs, dict):
        return "message: expected an observation dict"
    obs = {k.decode(errors="replace") if isinstance(k, bytes) else str(k): v for k, v in obs.items()}
    try:
        endpoint = _text_field(obs, "endpoint", "infer")
        if endpoint == "reset":
            session = _text_field(obs, "session_id", "default") or "default"
            engine.reset(session)
            return bytes(packb({"reset": True, "session_id": session}))
        if endpoint != "infer":
            return f"endpoint: unknown {endpoint!r}; use 'infer' or 'reset'"
        # Validation happens here; the chunk is awaited without holding a thread.
        result = await asyncio.wrap_future(engine.submit(_request_from(obs)))
    except RequestError as exc:
        return str(exc)
    reply = {
        "actions": np.ascontiguousarray(result.actions),
        "session_id": result.session_id,
        "chunk_index": result.chunk_index,
        "policy_version": result.policy_version,
        "server_timing": result.timing.model_dump(),
    }
    return bytes(packb(reply))
