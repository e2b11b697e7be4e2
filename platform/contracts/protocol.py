"""The policy wire protocol: openpi-compatible websocket messages packed with msgpack-numpy.

Robots send an observation dict per message; the server answers an action chunk. Arrays travel
in openpi's msgpack-numpy encoding ({"__ndarray__": True, "data", "dtype", "shape"}), so the
published `openpi-client` drives a wamfleet server unchanged. Messages:

- on connect, the server sends `PolicyMetadata` (with its `observation` mapping: which keys
  carry which camera and which slice of the state);
- request: {"endpoint": "infer" | "reset", "session_id": str, "instruction": str,
  "images": uint8 [views, H, W, 3] or [T, views, H, W, 3], "state": float32 [state_dim],
  or instead of images/state the keys of the embodiment's observation mapping (e.g. DROID's
  "observation/exterior_image_1_left", "observation/joint_position", ...),
  optional "frame_index": int (the video-rate index of the last image since the episode began),
  optional "session_token": str (from an earlier reply: carries a session over a reconnect)};
- reply: {"actions": float32 [chunk, action_dim], "policy_version": str, "session_id": str,
  "session_token": str, "chunk_index": int, "server_timing": {stage: ms}}, or a text frame
  "<input>: <problem>" for a bad message (the connection stays open).

A session belongs to the connection that opened it (or to whoever holds its session_token).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from wamfleet.platform.contracts.embodiment import (
    ActionGroup,
    ObservationMapping,
    default_action_layout,
    default_observation,
)

# Default largest message (4 frames of 2 cameras at 720p are ~21 MiB); `wamfleet serve
# --max-message-mib` sets both the server's websocket frame limit and its handler's check.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
Endpoint = Literal["infer", "reset"]


def _pack_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack_array(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in ("V", "O", "c"):
            raise ValueError(f"unsupported dtype {dtype}")
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


packb = functools.partial(msgpack.packb, default=_pack_array)


def unpackb(data: bytes) -> Any:
    """Decodes one message; object arrays (pickle) are refused, as in openpi."""
    return msgpack.unpackb(data, object_hook=_unpack_array, strict_map_key=False)


class PolicyMetadata(BaseModel):
    """What a client learns on connect: what to send and what comes back."""

    model_config = ConfigDict(extra="forbid")

    policy_version: str
    embodiment: str
    cameras: list[str]
    state_dim: int
    action_dim: int
    actions_per_chunk: int
    action_rate_hz: float
    video_frames_per_chunk: int = Field(description="Frames per executed chunk the server wants back.")
    protocol: str = "openpi-msgpack/1+wamfleet"
    # Which keys carry which camera / state slice (default: `images` stacked in `cameras` order
    # and `state`), and what each slice of an action is (default: one group). Declared after
    # the fields their defaults are computed from.
    observation: ObservationMapping = Field(
        default_factory=lambda data: default_observation(data["cameras"], data["state_dim"])
    )
    action_layout: list[ActionGroup] = Field(
        default_factory=lambda data: default_action_layout(data["action_dim"])
    )


class ServerTiming(BaseModel):
    validate_ms: float = 0.0
    encode_ms: float = 0.0
    denoise_ms: float = 0.0
    total_ms: float = 0.0
    queue_ms: float = 0.0
    batch_size: int = 1
