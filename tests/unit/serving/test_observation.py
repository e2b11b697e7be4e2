"""Observation mappings: declared by an embodiment, published by the server, used on requests.

The built-in `droid` embodiment is served here with openpi's DROID keys over both protocols;
existing embodiments keep the canonical `images` / `state` keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.testclient import WebSocketTestSession

from tests.unit.serving.policy_support import tiny_droid_policy, tiny_policy, v2_input
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import save_policy
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.platform.contracts.builtin_embodiments import (
    DROID_CAMERAS,
    builtin_embodiment,
    droid_embodiment,
)
from wamfleet.platform.contracts.embodiment import (
    ActionGroup,
    CameraSpec,
    EmbodimentSpec,
    ImageSource,
    MissingImage,
    ObservationMapping,
    StateSource,
)
from wamfleet.platform.contracts.protocol import PolicyMetadata, packb, unpackb
from wamfleet.serving.predictor import WAMPredictor
from wamfleet.serving.server import policy_app

torch.set_num_threads(1)
INFER = "/v2/models/wam/infer"
EXT1, EXT2, WRIST = (f"observation/{c}" for c in DROID_CAMERAS)
JOINTS, GRIPPER = "observation/joint_position", "observation/gripper_position"


# The contract ------------------------------------------------------------------------------------


def arm(**kw: Any) -> EmbodimentSpec:
    fields: dict[str, Any] = {
        "name": "arm",
        "cameras": [CameraSpec(name="front", height=8, width=8), CameraSpec(name="wrist", height=8, width=8)],
        "fps": 10,
        "state_names": ["a", "b", "c"],
        "action_names": ["x", "y"],
    }
    return EmbodimentSpec(**(fields | kw))


def images(*sources: tuple[str, str]) -> list[ImageSource]:
    return [ImageSource(key=key, cameras=[camera]) for key, camera in sources]


GOOD_IMAGES = images(("f", "front"), ("w", "wrist"))


def test_the_droid_embodiment_declares_openpis_keys_and_its_action_layout() -> None:
    spec = builtin_embodiment("droid")
    assert spec == droid_embodiment()
    assert [c.name for c in spec.cameras] == list(DROID_CAMERAS)
    assert (spec.state_dim, spec.action_dim, spec.fps) == (8, 8, 15.0)
    mapping = spec.observation_mapping
    assert mapping.keys == [EXT1, EXT2, WRIST, JOINTS, GRIPPER]
    optional = [s for s in mapping.images if s.when_missing is not MissingImage.refuse]
    assert [(s.key, s.when_missing, s.repeat_from) for s in optional] == [
        (EXT2, MissingImage.repeat, "exterior_image_1_left")
    ]
    assert [(g.name, g.start, g.stop) for g in spec.actions] == [
        ("joint_velocity", 0, 7),
        ("gripper_position", 7, 8),
    ]
    assert EmbodimentSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValueError, match="no built-in 'franka'"):
        builtin_embodiment("franka")


def test_an_embodiment_without_a_mapping_keeps_todays_keys() -> None:
    spec = arm()
    assert spec.observation is None and spec.action_layout is None
    mapping = spec.observation_mapping
    assert [(s.key, s.cameras, s.stacked) for s in mapping.images] == [("images", ["front", "wrist"], True)]
    assert [(s.key, s.start, s.stop) for s in mapping.state] == [("state", 0, 3)]
    assert [(g.name, g.start, g.stop) for g in spec.actions] == [("action", 0, 2)]
    # A spec stored before mappings existed reads back unchanged.
    stored = json.loads(spec.model_dump_json())
    del stored["observation"], stored["action_layout"]
    assert EmbodimentSpec.model_validate(stored) == spec


@pytest.mark.parametrize(
    ("mapping", "action_layout", "message"),
    [
        ({"images": images(("f", "front"), ("w", "elbow"))}, None, "'elbow', which is not one of"),
        ({"images": images(("f", "front"), ("w", "front"))}, None, "camera 'front' is filled by both"),
        ({"images": images(("f", "front"))}, None, r"no key fills cameras \['wrist'\]"),
        ({"images": images(("f", "front"), ("f", "wrist"))}, None, r"keys \['f'\] are used more than once"),
        ({"images": images(("prompt", "front"), ("w", "wrist"))}, None, "reserved"),
        ({"images": GOOD_IMAGES, "state": [StateSource(key="s", start=0, stop=4)]}, None, "ends at 4"),
        (
            {
                "images": GOOD_IMAGES,
                "state": [StateSource(key="s", start=0, stop=2), StateSource(key="t", start=1, stop=3)],
            },
            None,
            "'t' overlaps",
        ),
        (
            {"images": GOOD_IMAGES, "state": [StateSource(key="s", start=1, stop=3)]},
            None,
            r"values \[0, 1\) are filled by no",
        ),
        ({"images": GOOD_IMAGES, "state": [StateSource(key="s", start=0, stop=2)]}, None, r"values \[2, 3\)"),
        (
            {
                "images": GOOD_IMAGES,
                "state": [StateSource(key="s", start=0, stop=2), StateSource(key="s", start=2, stop=3)],
            },
            None,
            "used more than once",
        ),
        (
            {
                "images": [
                    ImageSource(key="f", cameras=["front"]),
                    ImageSource(
                        key="w", cameras=["wrist"], when_missing=MissingImage.repeat, repeat_from="top"
                    ),
                ]
            },
            None,
            "repeats unknown camera 'top'",
        ),
        (
            {
                "images": [
                    ImageSource(key="f", cameras=["front"], when_missing=MissingImage.blank),
                    ImageSource(
                        key="w", cameras=["wrist"], when_missing=MissingImage.repeat, repeat_from="front"
                    ),
                ]
            },
            None,
            "must repeat a camera whose key is required",
        ),
        (None, [ActionGroup(name="a", start=0, stop=3)], "'a' ends at 3"),
        (
            None,
            [ActionGroup(name="a", start=0, stop=2), ActionGroup(name="b", start=1, stop=2)],
            "'b' overlaps",
        ),
        (None, [ActionGroup(name="a", start=0, stop=1)], r"values \[1, 2\) are filled by no slice"),
    ],
)
def test_a_mapping_is_refused_naming_what_is_wrong(
    mapping: dict[str, Any] | None, action_layout: list[ActionGroup] | None, message: str
) -> None:
    kw: dict[str, Any] = {"action_layout": action_layout}
    if mapping is not None:
        kw["observation"] = ObservationMapping(**mapping)
    with pytest.raises(ValidationError, match=message):
        arm(**kw)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"key": "x", "cameras": ["front", "wrist"]}, "exactly one camera"),
        ({"key": "x", "cameras": ["front", "front"], "stacked": True}, "listed twice"),
        (
            {"key": "x", "cameras": ["front", "wrist"], "stacked": True, "when_missing": "blank"},
            "only a single-camera",
        ),
        ({"key": "x", "cameras": ["front"], "when_missing": "repeat"}, "repeat_from goes with"),
        ({"key": "x", "cameras": ["front"], "repeat_from": "wrist"}, "repeat_from goes with"),
        ({"key": "", "cameras": ["front"]}, "at least 1 character"),
        ({"key": "a\nb", "cameras": ["front"]}, "String should match pattern"),
    ],
)
def test_an_image_source_is_checked_on_its_own(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ImageSource.model_validate(source)


def test_a_state_slice_must_not_be_empty() -> None:
    with pytest.raises(ValidationError, match="stop \\(2\\) must be greater than start \\(2\\)"):
        StateSource(key="s", start=2, stop=2)


def test_metadata_built_without_a_mapping_publishes_the_default() -> None:
    meta = PolicyMetadata(
        policy_version="v",
        embodiment="x",
        cameras=["a", "b"],
        state_dim=3,
        action_dim=2,
        actions_per_chunk=8,
        action_rate_hz=15,
        video_frames_per_chunk=4,
    )
    assert meta.observation.keys == ["images", "state"]
    assert meta.observation.images[0].cameras == ["a", "b"]
    assert [(g.start, g.stop) for g in meta.action_layout] == [(0, 2)]
    assert PolicyMetadata.model_validate(meta.model_dump(mode="json")) == meta


# Served: the droid policy ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def droid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    predictor = WAMPredictor("wam", str(tiny_droid_policy(tmp_path_factory.mktemp("droid") / "p")))
    predictor.load()
    with TestClient(policy_app(predictor), raise_server_exceptions=False) as client:
        yield client
    predictor.stop()


def droid_obs(seed: int = 0, size: tuple[int, int] = (224, 224), **kw: Any) -> dict[str, Any]:
    """Exactly what openpi's examples/droid/main.py sends (one exterior camera, no session id)."""
    rng = np.random.default_rng(seed)
    message: dict[str, Any] = {
        EXT1: rng.integers(0, 255, (*size, 3), dtype=np.uint8),
        WRIST: rng.integers(0, 255, (*size, 3), dtype=np.uint8),
        JOINTS: rng.normal(size=7),  # float64, as the robot reports it
        GRIPPER: np.array([0.3]),
        "prompt": "put the marker in the bowl",
    }
    for key, value in kw.items():
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value
    return message


def reply(ws: WebSocketTestSession, message: dict[str, Any]) -> Any:
    ws.send_bytes(bytes(packb(message)))
    received = ws.receive()
    return received["text"] if received.get("text") is not None else unpackb(received["bytes"])


def test_the_droid_server_publishes_its_mapping_on_connect(droid: TestClient) -> None:
    with droid.websocket_connect("/") as ws:
        meta = PolicyMetadata.model_validate(unpackb(ws.receive_bytes()))
    assert meta.embodiment == "droid" and meta.cameras == list(DROID_CAMERAS)
    assert meta.observation == droid_embodiment().observation
    assert meta.action_layout == droid_embodiment().actions
    assert (meta.state_dim, meta.action_dim, meta.action_rate_hz) == (8, 8, 15.0)


def test_the_v2_model_metadata_lists_the_mapped_inputs(droid: TestClient) -> None:
    body = droid.get("/v2/models/wam").json()
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in body["inputs"]}
    assert inputs[EXT1] == ("UINT8", [-1, -1, 3]) and inputs[EXT2] == ("UINT8", [-1, -1, 3])
    assert inputs[JOINTS] == ("FP32", [7]) and inputs[GRIPPER] == ("FP32", [1])
    assert inputs["instruction"] == ("BYTES", [1])
    assert body["outputs"] == [{"name": "actions", "datatype": "FP32", "shape": [8, 8]}]


def test_openpi_droid_keys_get_actions_and_a_missing_second_exterior_repeats_the_first(
    droid: TestClient,
) -> None:
    obs = droid_obs()
    with (
        droid.websocket_connect("/") as a,
        droid.websocket_connect("/") as b,
        droid.websocket_connect("/") as c,
    ):
        a.receive_bytes(), b.receive_bytes(), c.receive_bytes()
        only_one = reply(a, obs)
        both = reply(b, obs | {EXT2: obs[EXT1]})
        other = reply(c, obs | {EXT2: np.zeros_like(obs[EXT1])})
    assert only_one["actions"].shape == (8, 8) and np.all(np.isfinite(only_one["actions"]))
    assert only_one["chunk_index"] == 1
    np.testing.assert_allclose(only_one["actions"], both["actions"], atol=1e-5)  # the documented policy
    assert not np.allclose(only_one["actions"], other["actions"], atol=1e-6)  # the second camera is seen


def test_flat_keys_and_the_canonical_keys_give_the_same_chunk(droid: TestClient) -> None:
    obs = droid_obs(1)
    stacked = np.stack([obs[EXT1], obs[EXT1], obs[WRIST]])
    state = np.concatenate([obs[JOINTS], obs[GRIPPER]]).astype(np.float32)
    canonical = {"images": stacked, "state": state, "prompt": obs["prompt"]}
    with droid.websocket_connect("/") as a, droid.websocket_connect("/") as b:
        a.receive_bytes(), b.receive_bytes()
        flat = reply(a, obs)
        same = reply(b, canonical)
    np.testing.assert_allclose(flat["actions"], same["actions"], atol=1e-5)


def test_several_frames_per_key_and_scalar_state_values_are_accepted(droid: TestClient) -> None:
    obs = droid_obs(2)
    frames = {k: np.stack([obs[k]] * 4) for k in (EXT1, WRIST)}  # [T, H, W, 3]
    with droid.websocket_connect("/") as ws:
        ws.receive_bytes()
        first = reply(ws, obs | {GRIPPER: 0.5})  # one number for a one-value slice
        second = reply(ws, obs | frames | {JOINTS: obs[JOINTS].tolist()})  # a plain list
    assert first["chunk_index"] == 1 and second["chunk_index"] == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({WRIST: None}, f"{WRIST}: missing from the observation"),
        ({EXT1: None}, f"{EXT1}: missing from the observation"),
        ({JOINTS: None}, f"{JOINTS}: missing from the observation"),
        ({JOINTS: np.zeros(6)}, f"{JOINTS}: expected 7 values, got 6"),
        ({GRIPPER: np.array([np.nan])}, f"{GRIPPER}: contains NaN or infinity"),
        ({GRIPPER: np.array([1e9])}, f"{GRIPPER}: values must be within"),
        ({JOINTS: np.array(["a"] * 7)}, f"{JOINTS}: expected a numeric array"),
        ({JOINTS: np.zeros(7, bool)}, f"{JOINTS}: expected a numeric array, got dtype bool"),
        ({JOINTS: [[1.0, 2.0], [3.0]]}, f"{JOINTS}: expected a rectangular numeric array"),
        ({WRIST: np.zeros((224, 224, 3), np.float32)}, f"{WRIST}: expected dtype uint8"),
        ({WRIST: np.zeros((224, 224), np.uint8)}, f"{WRIST}: expected [H, W, 3] or [T, H, W, 3]"),
        ({WRIST: np.zeros((224, 4, 3), np.uint8)}, f"{WRIST}: height and width must be within"),
        ({WRIST: np.zeros((112, 112, 3), np.uint8)}, f"{WRIST}: 1 frame(s) of 112x112, but {EXT1} has"),
        ({EXT2: np.zeros((2, 224, 224, 3), np.uint8)}, f"{EXT2}: 2 frame(s) of 224x224"),
        ({"prompt": None}, "instruction: missing from the observation"),
    ],
)
def test_bad_droid_input_is_named_by_its_key_and_the_connection_survives(
    droid: TestClient, change: dict[str, Any], expected: str
) -> None:
    with droid.websocket_connect("/") as ws:
        ws.receive_bytes()
        answer = reply(ws, droid_obs(3, **change))
        assert isinstance(answer, str) and expected in answer, answer
        assert reply(ws, droid_obs(3))["actions"].shape == (8, 8)


def v2_droid(obs: dict[str, Any], session: str = "rest") -> dict[str, Any]:
    inputs = [
        v2_input("instruction", "BYTES", [obs["prompt"]]),
        v2_input("session_id", "BYTES", [session]),
    ]
    for key in (EXT1, EXT2, WRIST):
        if key in obs:
            inputs.append(v2_input(key, "UINT8", obs[key].ravel().tolist(), list(obs[key].shape)))
    for key in (JOINTS, GRIPPER):
        if key in obs:
            value = np.asarray(obs[key], np.float32)
            inputs.append(v2_input(key, "FP32", value.ravel().tolist(), list(value.shape)))
    return {"inputs": inputs}


def test_v2_rest_takes_the_mapped_inputs_and_names_a_missing_one(droid: TestClient) -> None:
    obs = droid_obs(4, size=(32, 32))
    ok = droid.post(INFER, json=v2_droid(obs))
    assert ok.status_code == 200, ok.text
    output = ok.json()["outputs"][0]
    assert output["shape"] == [8, 8] and np.all(np.isfinite(output["data"]))
    bad_inputs: list[tuple[dict[str, Any], str]] = [
        ({WRIST: None}, f"{WRIST}: missing input"),
        ({JOINTS: np.zeros(3)}, f"{JOINTS}: expected 7 values, got 3"),
    ]
    for change, expected in bad_inputs:
        bad = droid.post(INFER, json=v2_droid(droid_obs(4, size=(32, 32), **change)))
        assert bad.status_code == 400 and expected in bad.json()["error"], bad.text


# Existing embodiments, and policies whose cameras the mapping does not fill ----------------------


def test_an_existing_policy_publishes_the_default_keys(tmp_path: Path) -> None:
    predictor = WAMPredictor("wam", str(tiny_policy(tmp_path / "p")))
    predictor.load()
    try:
        with TestClient(policy_app(predictor)) as client, client.websocket_connect("/") as ws:
            meta = unpackb(ws.receive_bytes())
            assert meta["observation"]["images"] == [
                {
                    "key": "images",
                    "cameras": ["exterior", "wrist"],
                    "stacked": True,
                    "when_missing": "refuse",
                    "repeat_from": None,
                }
            ]
            assert meta["observation"]["state"] == [{"key": "state", "start": 0, "stop": 39}]
            inputs = {i["name"]: i["shape"] for i in client.get("/v2/models/wam").json()["inputs"]}
            assert inputs["images"] == [2, -1, -1, 3] and inputs["state"] == [39]
    finally:
        predictor.stop()


def test_a_policy_whose_cameras_the_mapping_does_not_fill_is_refused_at_load(tmp_path: Path) -> None:
    spec = droid_embodiment()
    # The model takes a camera called "top", which no key of the droid mapping fills.
    cfg = WAMConfig.preset_named(
        "tiny",
        cameras=["exterior_image_1_left", "top", "wrist_image_left"],
        embodiments=[{"name": "droid", "state_dim": 8, "action_dim": 8}],
    )
    entry = {"spec": spec.model_dump(mode="json"), "action_norm": None, "state_norm": None}
    save_policy(tmp_path / "p", WorldActionModel(cfg), VideoCodec(cfg), embodiments={"droid": entry})
    predictor = WAMPredictor("wam", str(tmp_path / "p"))
    with pytest.raises(ValueError, match=r"fills no key for the model's cameras \['top'\]"):
        predictor.load()
