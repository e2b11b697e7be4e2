"""The openpi-compatible websocket endpoint, served on the predictor's own HTTP port.

On connect the server sends the policy metadata; every message is an observation dict
(msgpack-numpy) with `endpoint` "infer" (default) or "reset" and a `session_id`. Images and
state come as `images` and `state`, or under the keys of the embodiment's observation mapping
(published in the metadata; DROID's `observation/exterior_image_1_left`, ...). Replies are
msgpack dicts; every bad message (a text frame, undecodable bytes, bad input) is answered with
a text frame naming the input (the openpi client raises it as an error) and the connection
stays usable.

Sessions belong to the connection that opened them: the engine keys them by (owner,
session_id), and the owner is a random token per connection, so another connection that
sends the same `session_id` (or none: openpi's clients send none) gets its own session and can
neither reset nor write into this one. Replies carry that token as `session_token`; a client
that reconnects may send it back (`session_token` in the message) to carry on its session.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from wamfleet.platform.contracts.protocol import MAX_MESSAGE_BYTES, PolicyMetadata, packb, unpackb
from wamfleet.serving.engine import (
    MAX_TOKEN_CHARS,
    Engine,
    InferRequest,
    NonFiniteActions,
    RequestError,
    new_session_token,
)
from wamfleet.serving.observation import map_observation

log = logging.getLogger(__name__)
DEFAULT_SESSION = "default"  # the session of a client that sends no session_id (one per connection)
INTERNAL_ERROR = "server: internal error; the request was not served"
TEXT_FRAME = "message: expected a binary msgpack-numpy frame, got a text frame"


def api_key_ok(header: str | None, api_key: str | None) -> bool:
    """`Authorization: Api-Key <key>`, compared in constant time; anything goes without a key."""
    if api_key is None:
        return True
    return hmac.compare_digest((header or "").encode(), f"Api-Key {api_key}".encode())


def _text_field(obs: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = obs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _owner(obs: dict[str, Any], connection: str) -> str:
    """The message's own session_token (a session from an earlier connection), else the connection's."""
    token = _text_field(obs, "session_token")
    if token is not None and len(token) > MAX_TOKEN_CHARS:
        raise RequestError(f"session_token: at most {MAX_TOKEN_CHARS} characters")
    return token or connection


def _request_from(obs: dict[str, Any], owner: str, meta: PolicyMetadata) -> InferRequest:
    session = _text_field(obs, "session_id", DEFAULT_SESSION)
    instruction = _text_field(obs, "instruction") or _text_field(obs, "prompt")
    reset = obs.get("reset", False)
    if not isinstance(reset, bool | int | np.bool_):
        raise RequestError(f"reset: expected a boolean, got {type(reset).__name__}")
    images, state = map_observation(meta, obs)  # names the client's key when one is bad
    if instruction is None:
        raise RequestError("instruction: missing from the observation")
    return InferRequest(
        session_id=session or DEFAULT_SESSION,
        instruction=instruction or "",
        images=images,
        state=state,
        reset=bool(reset),
        frame_index=obs.get("frame_index"),
        owner=owner,
    )


def policy_websocket_router(
    engine: Callable[[], Engine],
    api_key: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> APIRouter:
    """The openpi endpoint at "/". `max_message_bytes` must equal the server's websocket frame
    limit (uvicorn's ws_max_size), so one setting decides what is refused."""
    router = APIRouter()

    @router.websocket("/")
    async def policy(ws: WebSocket) -> None:
        if not api_key_ok(ws.headers.get("authorization"), api_key):
            await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or wrong Api-Key")
            return
        await ws.accept()
        eng = engine()
        connection = new_session_token()  # owns the sessions this connection opens
        meta = eng.metadata()
        try:
            await ws.send_bytes(packb(meta.model_dump(mode="json")))
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:  # a text frame: answered, never a dropped connection
                    reply: bytes | str = TEXT_FRAME
                else:
                    reply = await _answer(eng, data, connection, max_message_bytes, meta)
                if isinstance(reply, str):
                    await ws.send_text(reply)
                else:
                    await ws.send_bytes(reply)
        except WebSocketDisconnect:
            return

    return router


async def _answer(
    engine: Engine,
    data: bytes,
    owner: str = "",
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    meta: PolicyMetadata | None = None,
) -> bytes | str:
    """One reply per message: msgpack bytes, or a text naming what was wrong (never an exception).
    `meta`: the engine's metadata (its observation mapping), read once per connection."""
    if len(data) > max_message_bytes:
        return f"message: {len(data)} bytes exceeds the {max_message_bytes}-byte limit"
    try:
        obs = unpackb(data)
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is the client's error
        return f"message: not msgpack-numpy ({type(exc).__name__})"
    if not isinstance(obs, dict):
        return "message: expected an observation dict"
    try:
        obs = {k.decode(errors="replace") if isinstance(k, bytes) else str(k): v for k, v in obs.items()}
        endpoint = _text_field(obs, "endpoint", "infer")
        who = _owner(obs, owner)
        if endpoint == "reset":
            session = _text_field(obs, "session_id", DEFAULT_SESSION) or DEFAULT_SESSION
            engine.reset(session, who)
            return bytes(packb({"reset": True, "session_id": session}))
        if endpoint != "infer":
            return f"endpoint: unknown {endpoint!r:.60}; use 'infer' or 'reset'"
        # Validation happens here; the chunk is awaited without holding a thread.
        request = _request_from(obs, who, meta or engine.metadata())
        result = await asyncio.wrap_future(engine.submit(request))
        reply = {
            "actions": np.ascontiguousarray(result.actions),
            "session_id": result.session_id,
            "session_token": who,
            "chunk_index": result.chunk_index,
            "policy_version": result.policy_version,
            "server_timing": result.timing.model_dump(),
        }
        return bytes(packb(reply))
    except RequestError as exc:
        return str(exc)
    except NonFiniteActions as exc:  # a broken model: the robot gets an error, never the NaNs
        log.warning("websocket: %s", exc)
        return str(exc)
    except Exception:
        log.exception("websocket: request failed")
        return INTERNAL_ERROR
