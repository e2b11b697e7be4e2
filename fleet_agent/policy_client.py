"""Robot-side clients for a policy server: the openpi websocket and the KServe v2 REST protocol.

A robot asks for one action chunk per call. Both clients raise the same three errors, so the
control loop can hold a safe action whatever went wrong: `PolicyTimeout` (no answer in time),
`PolicyUnavailable` (cannot connect, or the connection dropped twice) and `PolicyError` (the
server refused the request; the message is the server's). Only the base install is needed:
websockets, httpx, msgpack and numpy.
"""

from __future__ import annotations

import abc
import contextlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from wamfleet.platform.contracts.protocol import PolicyMetadata, ServerTiming, packb, unpackb

TIMING_KEYS = tuple(ServerTiming.model_fields)
MAX_TOKENS = 64  # session tokens a client remembers (the most recent sessions)


class _Tokens:
    """The server's session token per session_id: the credential that owns the session there."""

    def __init__(self) -> None:
        self._tokens: OrderedDict[str, str] = OrderedDict()

    def get(self, session_id: str) -> str | None:
        return self._tokens.get(session_id)

    def remember(self, session_id: str, token: Any) -> None:
        if isinstance(token, bytes):
            token = token.decode(errors="replace")
        if isinstance(token, str) and token:
            self._tokens[session_id] = token
            self._tokens.move_to_end(session_id)
            while len(self._tokens) > MAX_TOKENS:
                self._tokens.popitem(last=False)


class PolicyError(Exception):
    """The policy server refused or failed a request; the message says why."""


class PolicyTimeout(PolicyError):
    """No answer within the client's timeout."""


class PolicyUnavailable(PolicyError):
    """The server cannot be reached (refused, unresolvable, or the connection dropped)."""


@dataclass
class ActionChunk:
    """One reply: the actions to execute from the observation's step on, and where they came from."""

    actions: NDArray[np.float32]  # (actions_per_chunk, action_dim)
    policy_version: str
    chunk_index: int
    latency_s: float  # request sent to reply decoded, as the robot saw it
    server_timing: dict[str, float] = field(default_factory=dict)


class PolicyClient(abc.ABC):
    """What a control loop needs from a policy server, whatever the protocol."""

    @abc.abstractmethod
    def metadata(self) -> PolicyMetadata:
        """What to send and what comes back; may need a round trip (connect, or a first reply)."""

    @abc.abstractmethod
    def infer(
        self,
        session_id: str,
        instruction: str,
        images: ArrayLike,
        state: ArrayLike,
        frame_index: int | None = None,
    ) -> ActionChunk:
        """The next chunk for `session_id`; images uint8 [views, H, W, 3] or [T, views, H, W, 3]:
        the frames seen since the previous request at the server's video rate, the current one
        last. `frame_index`: the video-rate index of the last image since the episode's first
        frame, so the server places every frame at the time it was seen (resends and gaps too)."""

    @abc.abstractmethod
    def reset(self, session_id: str) -> None:
        """Forgets the session's context, so its next request starts a fresh episode."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the connection; safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _actions(value: Any) -> NDArray[np.float32]:
    actions = np.asarray(value, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[0] == 0:
        raise PolicyError(f"reply: expected actions [chunk, action_dim], got shape {actions.shape}")
    if not np.isfinite(actions).all():
        # A robot never executes NaN/inf: the reply counts as a failed request (safe action instead).
        raise PolicyError("reply: actions contain NaN or inf")
    return actions


def _images(images: ArrayLike) -> NDArray[np.uint8]:
    array = np.ascontiguousarray(images)
    if array.dtype != np.uint8:
        raise PolicyError(f"images: expected uint8, got {array.dtype}")
    return array


class WebsocketPolicyClient(PolicyClient):
    """The openpi msgpack-numpy websocket: one persistent connection, metadata on connect.

    Connects on first use, not in the constructor, so a robot whose server is down still
    starts (and holds safe actions). After a timeout the connection is closed, because a late
    reply would otherwise be read as the answer to the next request. A connection that drops
    between requests is reopened once per call; the session's token (from its replies) goes
    with every message, so the session carries on over the new connection.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 5.0) -> None:
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"url: expected ws:// or wss://, got {url!r}")
        self.url = url
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._conn: ClientConnection | None = None
        self._metadata: PolicyMetadata | None = None
        self._tokens = _Tokens()
        self._lock = threading.Lock()

    def _connect(self) -> ClientConnection:
        if self._conn is not None:
            return self._conn
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            conn = connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                max_size=None,
                compression=None,  # images are incompressible; deflate only costs time
                proxy=None,
            )
        except InvalidStatus as exc:
            code = exc.response.status_code
            hint = " (missing or wrong Api-Key?)" if code in (401, 403) else ""
            raise PolicyError(f"connect: {self.url} answered HTTP {code}{hint}") from None
        except TimeoutError:
            raise PolicyTimeout(f"connect: no handshake from {self.url} within {self.timeout_s:g}s") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise PolicyUnavailable(f"connect: {self.url} unreachable ({exc})") from None
        try:
            first = conn.recv(timeout=self.timeout_s)
        except TimeoutError:
            conn.close()
            raise PolicyTimeout(f"connect: no metadata from {self.url} within {self.timeout_s:g}s") from None
        except ConnectionClosed as exc:
            raise PolicyUnavailable(f"connect: {self.url} closed before sending metadata ({exc})") from None
        if isinstance(first, str):
            conn.close()
            raise PolicyError(first)
        try:
            self._metadata = PolicyMetadata.model_validate(unpackb(first))
        except (ValueError, ValidationError) as exc:
            conn.close()
            raise PolicyError(f"connect: {self.url} sent no policy metadata ({exc})") from None
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, RuntimeError):  # already broken; nothing to release
                self._conn.close()
            self._conn = None

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        payload = packb(message)
        with self._lock:
            for attempt in (0, 1):
                conn = self._connect()
                try:
                    conn.send(payload)
                    reply = conn.recv(timeout=self.timeout_s)
                except TimeoutError:
                    self._drop()
                    raise PolicyTimeout(f"infer: no reply within {self.timeout_s:g}s") from None
                except (ConnectionClosed, OSError) as exc:
                    self._drop()
                    if attempt == 1:
                        raise PolicyUnavailable(f"infer: connection to {self.url} dropped ({exc})") from None
                    continue
                if isinstance(reply, str):
                    raise PolicyError(reply)
                decoded = unpackb(reply)
                if not isinstance(decoded, dict):
                    raise PolicyError(f"reply: expected a dict, got {type(decoded).__name__}")
                return {k.decode() if isinstance(k, bytes) else k: v for k, v in decoded.items()}
        raise AssertionError("unreachable")  # pragma: no cover

    def metadata(self) -> PolicyMetadata:
        with self._lock:
            self._connect()
            assert self._metadata is not None
            return self._metadata

    def infer(
        self,
        session_id: str,
        instruction: str,
        images: ArrayLike,
        state: ArrayLike,
        frame_index: int | None = None,
    ) -> ActionChunk:
        message: dict[str, Any] = {
            "endpoint": "infer",
            "session_id": session_id,
            "instruction": instruction,
            "images": _images(images),
            "state": np.ascontiguousarray(state, dtype=np.float32).reshape(-1),
        }
        if frame_index is not None:
            message["frame_index"] = int(frame_index)
        token = self._tokens.get(session_id)
        if token is not None:
            message["session_token"] = token
        started = time.perf_counter()
        reply = self._call(message)
        latency = time.perf_counter() - started
        if "actions" not in reply:
            raise PolicyError(f"reply: no actions (keys {sorted(reply)})")
        self._tokens.remember(session_id, reply.get("session_token"))
        timing = reply.get("server_timing") or {}
        return ActionChunk(
            actions=_actions(reply["actions"]),
            policy_version=str(reply.get("policy_version", "")),
            chunk_index=int(reply.get("chunk_index", 0)),
            latency_s=latency,
            server_timing={str(k): float(v) for k, v in timing.items()},
        )

    def reset(self, session_id: str) -> None:
        message = {"endpoint": "reset", "session_id": session_id}
        token = self._tokens.get(session_id)
        if token is not None:
            message["session_token"] = token
        self._call(message)

    def close(self) -> None:
        with self._lock:
            self._drop()


class RestPolicyClient(PolicyClient):
    """KServe Open Inference Protocol v2 (JSON) at `<url>/v2/models/<model>/infer`.

    v2 has no metadata message, so this client learns the policy version, chunk length and
    action size from its first reply; what v2 cannot say (the control rate, the server's video
    rate, camera names) comes from the constructor's hints. v2 has no reset either: `reset`
    marks the session, and its next request carries `reset=True`. A session's first reply
    carries its `session_token`; every later request of that session sends it back, since the
    server gives a request without it a session of its own.
    """

    def __init__(
        self,
        url: str,
        model: str = "wam",
        timeout_s: float = 5.0,
        *,
        api_key: str | None = None,
        action_rate_hz: float = 0.0,
        video_frames_per_chunk: int | None = None,
        cameras: list[str] | None = None,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"url: expected http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.action_rate_hz = action_rate_hz
        self.video_frames_per_chunk = video_frames_per_chunk
        self.cameras = cameras
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._http = httpx.Client(timeout=timeout_s, headers=headers, trust_env=False)
        self._metadata: PolicyMetadata | None = None
        self._pending_reset: set[str] = set()
        self._tokens = _Tokens()
        self._lock = threading.Lock()

    def metadata(self) -> PolicyMetadata:
        if self._metadata is None:
            raise PolicyError("metadata: a REST client learns it from its first reply; call infer first")
        return self._metadata

    def _body(
        self,
        session_id: str,
        instruction: str,
        images: NDArray[np.uint8],
        state: NDArray[np.float32],
        frame_index: int | None,
    ) -> dict[str, Any]:
        inputs: list[dict[str, Any]] = [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": "UINT8",
                "data": images.ravel().tolist(),
            },
            {"name": "state", "shape": list(state.shape), "datatype": "FP32", "data": state.tolist()},
            {"name": "instruction", "shape": [1], "datatype": "BYTES", "data": [instruction]},
            {"name": "session_id", "shape": [1], "datatype": "BYTES", "data": [session_id]},
        ]
        if session_id in self._pending_reset:
            inputs.append({"name": "reset", "shape": [1], "datatype": "BOOL", "data": [True]})
        token = self._tokens.get(session_id)
        if token is not None:
            inputs.append({"name": "session_token", "shape": [1], "datatype": "BYTES", "data": [token]})
        if frame_index is not None:
            inputs.append(
                {"name": "frame_index", "shape": [1], "datatype": "INT64", "data": [int(frame_index)]}
            )
        return {"inputs": inputs}

    def infer(
        self,
        session_id: str,
        instruction: str,
        images: ArrayLike,
        state: ArrayLike,
        frame_index: int | None = None,
    ) -> ActionChunk:
        frames = _images(images)
        state_vec = np.asarray(state, dtype=np.float32).reshape(-1)
        with self._lock:
            body = self._body(session_id, instruction, frames, state_vec, frame_index)
            started = time.perf_counter()
            try:
                response = self._http.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
            except httpx.TimeoutException:
                raise PolicyTimeout(f"infer: no reply within {self.timeout_s:g}s") from None
            except httpx.TransportError as exc:
                raise PolicyUnavailable(f"infer: {self.url} unreachable ({exc})") from None
            latency = time.perf_counter() - started
            self._pending_reset.discard(session_id)
        if not response.is_success:
            raise PolicyError(f"HTTP {response.status_code}: {_error_message(response)}")
        try:
            reply = response.json()
            output = next(o for o in reply["outputs"] if o["name"] == "actions")
            actions = _actions(np.asarray(output["data"], np.float32).reshape(output["shape"]))
            params = dict(reply.get("parameters") or {})
        except (json.JSONDecodeError, KeyError, StopIteration, TypeError, ValueError) as exc:
            raise PolicyError(f"reply: not a v2 actions response ({type(exc).__name__}: {exc})") from None
        with self._lock:
            self._tokens.remember(session_id, params.get("session_token"))
        chunk = ActionChunk(
            actions=actions,
            policy_version=str(params.get("policy_version", "")),
            chunk_index=int(params.get("chunk_index", 0)),
            latency_s=latency,
            server_timing={k: float(params[k]) for k in TIMING_KEYS if k in params},
        )
        if self._metadata is None or self._metadata.policy_version != chunk.policy_version:
            self._metadata = self._learn(chunk, frames, state_vec, params)
        return chunk

    def _learn(
        self,
        chunk: ActionChunk,
        images: NDArray[np.uint8],
        state: NDArray[np.float32],
        params: dict[str, Any],
    ) -> PolicyMetadata:
        """Metadata from a reply: wamfleet servers put rates and sizes in the parameters; hints fill gaps."""
        views = images.shape[-4] if images.ndim >= 4 else 1
        length, action_dim = chunk.actions.shape
        return PolicyMetadata(
            policy_version=chunk.policy_version,
            embodiment=str(params.get("embodiment", "unknown")),
            cameras=self.cameras or [f"view{i}" for i in range(views)],
            state_dim=int(state.shape[0]),
            action_dim=int(action_dim),
            actions_per_chunk=int(length),
            action_rate_hz=float(params.get("action_rate_hz", self.action_rate_hz)),
            video_frames_per_chunk=int(
                params.get("video_frames_per_chunk") or self.video_frames_per_chunk or length
            ),
        )

    def reset(self, session_id: str) -> None:
        with self._lock:
            self._pending_reset.add(session_id)

    def close(self) -> None:
        self._http.close()


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:500]
    if isinstance(body, dict):
        message = body.get("error", body.get("detail", body))
        return message if isinstance(message, str) else json.dumps(message)[:500]
    return json.dumps(body)[:500]


def open_policy_client(
    endpoint: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 5.0,
    model: str = "wam",
    action_rate_hz: float = 0.0,
    video_frames_per_chunk: int | None = None,
) -> PolicyClient:
    """ws:// or wss:// opens the websocket client; http:// or https:// the v2 REST client."""
    scheme = urlsplit(endpoint).scheme
    if scheme in ("ws", "wss"):
        return WebsocketPolicyClient(endpoint, api_key=api_key, timeout_s=timeout_s)
    if scheme in ("http", "https"):
        return RestPolicyClient(
            endpoint,
            model,
            timeout_s,
            api_key=api_key,
            action_rate_hz=action_rate_hz,
            video_frames_per_chunk=video_frames_per_chunk,
        )
    raise ValueError(f"endpoint: expected ws://, wss://, http:// or https://, got {endpoint!r}")
