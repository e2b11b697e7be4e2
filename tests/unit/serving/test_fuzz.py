"""Property tests: no malformed message breaks the policy server, over either protocol.

Websocket messages go through the real router (FastAPI's TestClient, one connection for every
example: a dropped connection fails the next example), v2 REST bodies through the served app
(KServe's routes behind the gate). Every bad input must get an error naming it (a text frame; a
400/422 with `{"error": "<input>: ..."}`), never a 500 or a dropped connection; afterwards a
valid request is served and memory has not grown.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from starlette.testclient import WebSocketTestSession

from tests.unit.serving.policy_support import tiny_policy, v2_body, v2_input
from wamfleet.platform.contracts.protocol import packb, unpackb
from wamfleet.serving.engine import PolicyEngine
from wamfleet.serving.predictor import WAMPredictor
from wamfleet.serving.server import policy_app
from wamfleet.serving.websocket import _answer

torch.set_num_threads(1)
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INFER = "/v2/models/wam/infer"

# Native and foreign byte orders, widths, and empty or 0-d shapes.
dtypes = st.sampled_from(
    ["|u1", "<f4", ">f4", "<i8", ">i8", "<u2", ">u2", "<f8", ">f8", "<f2", "|b1", "<U3", "<M8[s]", "<m8[s]"]
)
arrays = hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what msgpack can carry
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
nested = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=24)  # ragged too
values = st.one_of(leaves, nested, arrays)
observations = st.fixed_dictionaries(
    {},
    optional={
        "images": values,
        "state": values,
        "instruction": values,
        "prompt": values,
        "session_id": values,
        "session_token": values,
        "frame_index": values,
        "endpoint": st.one_of(st.sampled_from(["infer", "reset"]), values),
        "reset": values,
    },
)


def packed(obs: dict[str, object]) -> bytes | None:
    try:
        return bytes(packb(obs))
    except (OverflowError, ValueError, TypeError):
        return None  # nothing a client could send


# A valid observation with one field replaced reaches the deeper checks.
def near_valid(field: str, value: Any) -> dict[str, Any]:
    return {
        "images": np.zeros((2, 16, 16, 3), np.uint8),
        "state": np.zeros(39, np.float32),
        "prompt": "reach",
        "session_id": "fuzz",
    } | {field: value}


ws_messages = st.one_of(
    st.text(max_size=64),  # a text frame
    st.binary(max_size=256),
    observations.map(packed).filter(lambda m: m is not None),
    st.builds(near_valid, st.sampled_from(["images", "state", "frame_index", "session_id", "reset"]), values)
    .map(packed)
    .filter(lambda m: m is not None),
)

# v2 REST: JSON leaves include huge integers (beyond int64), NaN and infinities.
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=8),
)
json_data = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=24)
names = st.sampled_from(
    ["images", "state", "instruction", "session_id", "reset", "frame_index", "session_token"]
)
datatypes = st.sampled_from(
    ["UINT8", "UINT16", "INT8", "INT64", "FP16", "FP32", "FP64", "BOOL", "BYTES", "NOPE"]
)
shapes = st.lists(st.one_of(st.integers(-2, 6), st.integers(0, 2**70)), max_size=5)
tensors = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes, "data": st.lists(json_data, max_size=8)}
)


def replace_one(tensor: dict[str, Any]) -> dict[str, Any]:
    replaced: dict[str, Any] = {tensor["name"]: tensor}
    return v2_body("fuzz", **replaced)


def uint8_input(name: str, data: list[int], shape: list[int]) -> dict[str, Any]:
    return replace_one(v2_input(name, "UINT8", data, shape))


rest_bodies = st.one_of(
    json_data,  # not an object at all (NaN, a list, a number ...)
    st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=6)}),
    st.fixed_dictionaries({}, optional={"inputs": json_data, "id": json_data, "parameters": json_data}),
    tensors.map(replace_one),
    st.builds(
        uint8_input,
        st.sampled_from(["images", "reset", "frame_index"]),
        st.lists(st.integers(-(2**70), 2**70), max_size=8),
        shapes,
    ),
)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WAMPredictor]:
    predictor = WAMPredictor("wam", str(tiny_policy(tmp_path_factory.mktemp("fuzz") / "p")))
    predictor.load()
    yield predictor
    predictor.stop()


@pytest.fixture(scope="module")
def engine(predictor: WAMPredictor) -> PolicyEngine:
    assert isinstance(predictor.engine, PolicyEngine)
    return predictor.engine


@pytest.fixture(scope="module")
def client(predictor: WAMPredictor) -> Iterator[TestClient]:
    with TestClient(policy_app(predictor), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def ws(client: TestClient) -> Iterator[WebSocketTestSession]:
    with client.websocket_connect("/") as ws:
        assert isinstance(unpackb(ws.receive_bytes()), dict)  # the metadata
        yield ws


def send(ws: WebSocketTestSession, message: str | bytes) -> Any:
    if isinstance(message, str):
        ws.send_text(message)
    else:
        ws.send_bytes(message)
    reply = ws.receive()
    assert reply["type"] == "websocket.send", reply  # not a close: the connection stays usable
    return reply.get("text") if reply.get("text") is not None else unpackb(reply["bytes"])


def post(client: TestClient, body: Any) -> Any:
    return client.post(INFER, content=json.dumps(body), headers={"content-type": "application/json"})


def assert_valid_request_served(client: TestClient, ws: WebSocketTestSession, engine: PolicyEngine) -> None:
    reply = send(ws, bytes(packb(near_valid("session_id", "after-fuzz"))))
    assert isinstance(reply, dict) and reply["actions"].shape == (8, 4)
    response = post(client, v2_body("after-fuzz"))
    assert response.status_code == 200, response.text
    # Sessions stay within the memory budget whatever the storm opened (the LRU keeps one extra).
    assert engine.sessions.nbytes() <= engine.sessions.max_bytes + max(
        s.nbytes() for s in engine.sessions._sessions.values()
    )


@FUZZ
@given(message=ws_messages)
def test_malformed_websocket_messages_get_an_error_frame_and_keep_the_connection(
    ws: WebSocketTestSession, message: str | bytes
) -> None:
    reply = send(ws, message)
    if isinstance(reply, str):
        assert ":" in reply and "Traceback" not in reply, reply  # "<input>: <problem>"
    else:
        assert isinstance(reply, dict)  # it happened to be valid (a reset, a chunk)
        if "actions" in reply:
            assert np.all(np.isfinite(reply["actions"]))


@FUZZ
@given(body=rest_bodies)
def test_malformed_rest_bodies_get_a_4xx_naming_the_input(client: TestClient, body: Any) -> None:
    response = post(client, body)
    assert response.status_code in (200, 400, 422), (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert ":" in error and "Error" not in error, error
    else:
        assert np.all(np.isfinite(response.json()["outputs"][0]["data"]))


def test_a_valid_request_is_served_after_the_storms(
    client: TestClient, ws: WebSocketTestSession, engine: PolicyEngine
) -> None:
    assert_valid_request_served(client, ws, engine)


def storm() -> list[tuple[str, Any]]:
    """A fixed mix of bad messages over both protocols."""
    bad_ws: list[str | bytes] = [
        "text",
        b"\xc1",
        bytes(packb([1, 2])),
        bytes(packb({"images": [[1, 2], [3]]})),
    ]
    bad_ws += [
        bytes(packb(near_valid(f, v))) for f, v in [("state", np.zeros(3, ">f4")), ("images", np.zeros(0))]
    ]
    bad_ws += [
        bytes(packb(near_valid("state", np.full(39, 1e30)))),
        bytes(packb(near_valid("state", ["1"] * 39))),
    ]
    bad_rest: list[Any] = ["NaN", [1], {"inputs": 3}, v2_body(reset=v2_input("reset", "BOOL", []))]
    bad_rest += [v2_body(images=v2_input("images", "UINT8", [300], [1])), v2_body(state=None)]
    bad_rest += [v2_body(frame_index=v2_input("frame_index", "INT64", [2**70]))]
    return [("ws", m) for m in bad_ws] * 3 + [("rest", b) for b in bad_rest] * 3


def test_a_storm_of_bad_requests_leaves_memory_and_sessions_as_they_were(
    client: TestClient, ws: WebSocketTestSession, engine: PolicyEngine
) -> None:
    messages = storm()

    def run() -> None:
        for protocol, message in messages:
            if protocol == "ws":
                assert isinstance(send(ws, message), str)
            else:
                assert post(client, message).status_code in (400, 422)

    logging.disable(logging.CRITICAL)  # captured log records would count as growth
    try:
        run()  # warm: lazily built routes, caches and metric children
        sessions = len(engine.sessions)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    finally:
        logging.disable(logging.NOTSET)
    assert grown < 512 * 1024, f"{grown} bytes still held after {3 * len(messages)} bad requests"
    assert len(engine.sessions) == sessions  # bad requests open no session
    assert_valid_request_served(client, ws, engine)


def test_the_handler_refuses_a_message_over_its_limit(engine: PolicyEngine) -> None:
    message = bytes(packb({"images": np.zeros((2, 96, 96, 3), np.uint8)}))
    reply = asyncio.run(_answer(engine, message, "owner", max_message_bytes=100))
    assert isinstance(reply, str) and "exceeds the 100-byte limit" in reply
