"""Client observations -> the engine's stacked images and state, by the embodiment's mapping.

Both protocols receive a flat dict of named values (websocket message keys, v2 input names).
The canonical keys `images` (every camera stacked, in camera order) and `state` (the whole
vector) are always accepted. Otherwise the policy's `observation` mapping (published in its
metadata) says which key fills which camera and which slice of the state, e.g. DROID's
`observation/exterior_image_1_left` or `observation/joint_position`. Each value is checked
here, so an error names the client's own key (`observation/joint_position: expected 7 values,
got 6`); a camera whose key is optional is repeated from another camera or blanked, as the
mapping says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wamfleet.platform.contracts.embodiment import (
    CANONICAL_IMAGES,
    CANONICAL_STATE,
    ImageSource,
    MissingImage,
    ObservationMapping,
)
from wamfleet.platform.contracts.protocol import PolicyMetadata
from wamfleet.serving.engine import (
    MAX_FRAMES_PER_REQUEST,
    MAX_IMAGE_SIDE,
    MAX_STATE_ABS,
    RequestError,
    numeric_array,
)

MISSING = "missing from the observation"


def _frames(value: Any, source: ImageSource) -> NDArray[np.uint8]:
    """One key's images as [T, views, H, W, 3]."""
    key = source.key
    images = numeric_array(value, key, allow_bool=False)
    if images.dtype != np.uint8:
        raise RequestError(f"{key}: expected dtype uint8, got {images.dtype}")
    views = len(source.cameras)
    if source.stacked:
        if images.ndim == 4:
            images = images[None]
        if images.ndim != 5 or images.shape[1] != views or images.shape[-1] != 3:
            raise RequestError(
                f"{key}: expected [views={views}, H, W, 3] or [T, {views}, H, W, 3], got {images.shape}"
            )
    else:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise RequestError(f"{key}: expected [H, W, 3] or [T, H, W, 3] uint8, got {images.shape}")
        images = images[:, None]
    if not 0 < images.shape[0] <= MAX_FRAMES_PER_REQUEST:
        raise RequestError(f"{key}: between 1 and {MAX_FRAMES_PER_REQUEST} frames, got {images.shape[0]}")
    h, w = images.shape[2:4]
    if not (8 <= h <= MAX_IMAGE_SIDE and 8 <= w <= MAX_IMAGE_SIDE):
        raise RequestError(f"{key}: height and width must be within [8, {MAX_IMAGE_SIDE}], got {h}x{w}")
    return images


def map_images(
    mapping: ObservationMapping, cameras: list[str], obs: Mapping[str, Any], missing: str = MISSING
) -> Any:
    """The stacked [T, views, H, W, 3] images in `cameras` order (or the canonical `images`
    value, passed through as it came: the engine checks it)."""
    keys = {s.key for s in mapping.images}
    if CANONICAL_IMAGES not in keys and obs.get(CANONICAL_IMAGES) is not None:
        return obs[CANONICAL_IMAGES]
    only = mapping.images[0]
    if len(mapping.images) == 1 and only.stacked and only.cameras == cameras:  # the default: as is
        if obs.get(only.key) is None:
            raise RequestError(f"{only.key}: {missing}")
        return obs[only.key]
    per_camera: dict[str, NDArray[np.uint8]] = {}
    first: tuple[str, tuple[int, ...]] | None = None  # the key that set T, H, W
    absent_keys: list[ImageSource] = []
    for source in mapping.images:
        value = obs.get(source.key)
        if value is None:
            if source.when_missing is MissingImage.refuse:
                raise RequestError(f"{source.key}: {missing}")
            absent_keys.append(source)
            continue
        frames = _frames(value, source)
        shape = (frames.shape[0], *frames.shape[2:])
        if first is None:
            first = (source.key, shape)
        elif shape != first[1]:
            t, h, w, _ = shape
            raise RequestError(
                f"{source.key}: {t} frame(s) of {h}x{w}, but {first[0]} has "
                f"{first[1][0]} frame(s) of {first[1][1]}x{first[1][2]}; send every camera at one size"
            )
        for i, camera in enumerate(source.cameras):
            per_camera[camera] = frames[:, i]
    if first is None:  # a mapping always has a required key; this only guards a custom one
        raise RequestError(f"{mapping.images[0].key}: {missing}")
    for source in absent_keys:
        camera = source.cameras[0]
        if source.when_missing is MissingImage.repeat and source.repeat_from is not None:
            per_camera[camera] = per_camera[source.repeat_from]
        else:
            per_camera[camera] = np.zeros(first[1], np.uint8)
    absent = [c for c in cameras if c not in per_camera]
    if absent:  # the policy's cameras and its embodiment's mapping disagree: a server fault
        raise RuntimeError(f"observation mapping fills no image for cameras {absent}")
    return np.stack([per_camera[c] for c in cameras], axis=1)


def map_state(
    mapping: ObservationMapping, state_dim: int, obs: Mapping[str, Any], missing: str = MISSING
) -> Any:
    """The state vector (or the canonical `state` value, passed through as it came: the engine
    checks it)."""
    keys = {s.key for s in mapping.state}
    if CANONICAL_STATE not in keys and obs.get(CANONICAL_STATE) is not None:
        return obs[CANONICAL_STATE]
    if [(s.key, s.start, s.stop) for s in mapping.state] == [(CANONICAL_STATE, 0, state_dim)]:
        if obs.get(CANONICAL_STATE) is None:  # the default: as is
            raise RequestError(f"{CANONICAL_STATE}: {missing}")
        return obs[CANONICAL_STATE]
    state = np.zeros(state_dim, np.float64)
    for source in mapping.state:
        value = obs.get(source.key)
        if value is None:
            raise RequestError(f"{source.key}: {missing}")
        raw = numeric_array(value, source.key, allow_bool=False)
        if raw.dtype.kind not in "iuf":
            raise RequestError(f"{source.key}: expected integers or floats, got dtype {raw.dtype}")
        if raw.size != source.size:
            raise RequestError(f"{source.key}: expected {source.size} values, got {raw.size}")
        wide = raw.astype(np.float64).reshape(-1)
        if not np.all(np.isfinite(wide)):
            raise RequestError(f"{source.key}: contains NaN or infinity")
        too_big = np.flatnonzero(np.abs(wide) > MAX_STATE_ABS)
        if too_big.size:
            i = int(too_big[0])
            raise RequestError(
                f"{source.key}: values must be within +-{MAX_STATE_ABS:g}, got {wide[i]:g} at index {i}"
            )
        state[source.start : source.stop] = wide
    return state


def map_observation(meta: PolicyMetadata, obs: Mapping[str, Any], missing: str = MISSING) -> tuple[Any, Any]:
    """(images, state) for an engine request, from a client's flat observation; `missing` is
    how an absent key is described (the websocket's "missing from the observation", v2's
    "missing input")."""
    images = map_images(meta.observation, meta.cameras, obs, missing)
    return images, map_state(meta.observation, meta.state_dim, obs, missing)


def v2_inputs(meta: PolicyMetadata) -> list[dict[str, Any]]:
    """The v2 model metadata's inputs: the mapping's keys (one frame each; -1 = any size), then
    the text inputs. Optional inputs (a camera that may be left out, reset, frame_index,
    session_token) are listed in docs/serving.md; v2 metadata has no way to say so."""
    inputs: list[dict[str, Any]] = []
    for image in meta.observation.images:
        shape = [len(image.cameras), -1, -1, 3] if image.stacked else [-1, -1, 3]
        inputs.append({"name": image.key, "datatype": "UINT8", "shape": shape})
    for state in meta.observation.state:
        inputs.append({"name": state.key, "datatype": "FP32", "shape": [state.size]})
    for name in ("instruction", "session_id"):
        inputs.append({"name": name, "datatype": "BYTES", "shape": [1]})
    return inputs


def check_mapping(meta: PolicyMetadata) -> PolicyMetadata:
    """The metadata, once its mapping is known to fill every camera the model takes (in the
    model's order); ValueError at load otherwise, never a fault per request."""
    filled = {camera for source in meta.observation.images for camera in source.cameras}
    unfilled = [c for c in meta.cameras if c not in filled]
    if unfilled:
        raise ValueError(
            f"embodiment {meta.embodiment!r}: its observation mapping fills no key for the model's "
            f"cameras {unfilled} (the mapping fills {sorted(filled)})"
        )
    return meta
