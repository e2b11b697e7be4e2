"""The served app (KServe's routes gated + the openpi websocket), through FastAPI's TestClient:
auth on every route, only supported routes, 4xx naming the input, sessions owned by their client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from tests.unit.serving.policy_support import nan_policy, tiny_policy, v2_body, v2_input
from wamfleet.platform.contracts.protocol import packb, unpackb
from wamfleet.serving.engine import PolicyEngine
from wamfleet.serving.predictor import WAMPredictor
from wamfleet.serving.server import INTERNAL_ERROR, policy_app

torch.set_num_threads(1)
KEY = "fleet-key"
AUTH = {"Authorization": f"Api-Key {KEY}"}
INFER = "/v2/models/wam/infer"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WAMPredictor]:
    predictor = WAMPredictor("wam", str(tiny_policy(tmp_path_factory.mktemp("server") / "p")))
    predictor.load()
    yield predictor
    predictor.stop()


@pytest.fixture(scope="module")
def client(predictor: WAMPredictor) -> Iterator[TestClient]:
    with TestClient(policy_app(predictor, api_key=KEY), raise_server_exceptions=False) as client:
        yield client


def obs(session: str | None = "w", **kw: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "images": np.zeros((2, 16, 16, 3), np.uint8),
        "state": np.zeros(39, np.float32),
        "prompt": "reach the goal",
    }
    if session is not None:
        message["session_id"] = session
    return message | kw


def ws_reply(ws: WebSocketTestSession) -> Any:
    """The next reply: a decoded dict, or the text of an error frame."""
    message = ws.receive()
    assert message["type"] == "websocket.send", message
    if message.get("text") is not None:
        return message["text"]
    return unpackb(message["bytes"])


def connect(client: TestClient) -> Any:
    return client.websocket_connect("/", headers=AUTH)


# Auth and routes -----------------------------------------------------------------------------

PUBLIC = ["/", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models", "/v2/models/wam"]
PUBLIC += ["/v2/models/wam/ready"]
REFUSED = [
    ("POST", "/v1/models/wam:predict"),
    ("POST", "/v1/models/wam:explain"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/wam"),
    ("POST", "/v2/models/wam/versions/1/infer"),
    ("GET", "/v2/models/wam/versions/1"),
    ("GET", "/v2/models/wam/versions/1/ready"),
    ("POST", "/v2/repository/models/wam/load"),
    ("POST", "/v2/repository/models/wam/unload"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/nope"),
    ("GET", INFER),
]


@pytest.mark.parametrize("path", PUBLIC)
def test_probe_metadata_and_metrics_routes_need_no_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Api-Key wrong"}, {"Authorization": KEY}])
def test_inference_needs_the_key_on_every_protocol(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post(INFER, json=v2_body(), headers=headers)
    assert response.status_code == 401 and response.json() == {"error": "missing or wrong Api-Key"}
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/", headers=headers) as ws:
        ws.receive()
    assert closed.value.code == 1008
    assert client.post(INFER, json=v2_body(), headers=AUTH).status_code == 200
    with connect(client) as ws:
        assert ws_reply(ws)["action_dim"] == 4


def test_the_key_is_compared_in_constant_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.post(INFER, json=v2_body(), headers={"Authorization": "Api-Key nope"}).status_code == 401
    assert calls and calls[-1] == (b"Api-Key nope", f"Api-Key {KEY}".encode())


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_only_supported_routes_are_served(client: TestClient, method: str, path: str) -> None:
    """KServe's v1 routes (500 AttributeError before), versions, repository load/unload (an
    unauthenticated unload took the model down) and unknown paths: 404, key or not."""
    for headers in ({}, AUTH):
        response = client.request(method, path, headers=headers, json={"instances": [1]})
        assert response.status_code == 404, (path, response.text)
    assert client.get("/v2/models/wam/ready").status_code == 200  # still loaded


def test_an_unsupported_websocket_path_is_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v1", headers=AUTH) as ws:
        ws.receive()


# REST errors -------------------------------------------------------------------------------------


def images_with(value: int) -> dict[str, Any]:
    data = [0] * (2 * 16 * 16 * 3)
    data[0] = value
    return v2_input("images", "UINT8", data, [2, 16, 16, 3])


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("uint8 300", v2_body(images=images_with(300)), 400, "images: a value is out of range for UINT8"),
    ("uint8 -1", v2_body(images=images_with(-1)), 400, "images: a value is out of range for UINT8"),
    (
        "int above int64",
        v2_body(frame_index=v2_input("frame_index", "INT64", [2**70])),
        400,
        "frame_index: a value is out of range for INT64",
    ),
    ("int above int64 in FP32", v2_body(state=v2_input("state", "FP32", [2**70] * 39)), 400, "state: values"),
    ("int above int64 in UINT8", v2_body(images=images_with(2**70)), 400, "images: a value is out of range"),
    ("empty reset", v2_body(reset=v2_input("reset", "BOOL", [])), 400, "reset: expected one BOOL element"),
    ("two resets", v2_body(reset=v2_input("reset", "BOOL", [True, True])), 400, "reset: expected one"),
    ("text reset", v2_body(reset=v2_input("reset", "BYTES", ["yes"])), 400, "reset: expected one BOOL"),
    (
        "empty session",
        v2_body(session_id=v2_input("session_id", "BYTES", [])),
        400,
        "session_id: expected one",
    ),
    ("bare NaN", "NaN", 422, "body:"),
    ("not JSON", "{", 422, "body: not valid JSON"),
    ("a list", [1], 422, "body:"),
    ("no inputs", {"outputs": []}, 422, "inputs"),
    ("ragged", v2_body(state=v2_input("state", "FP32", [[0.0] * 3, [1.0]], [39])), 400, "state: data is not"),
    ("shape mismatch", v2_body(state=v2_input("state", "FP32", [0.0] * 39, [40])), 400, "state: data is not"),
    ("huge shape", v2_body(state=v2_input("state", "FP32", [0.0] * 39, [2**70])), 400, "state: data is not"),
    (
        "bad datatype",
        v2_body(state=v2_input("state", "NOPE", [0.0] * 39)),
        400,
        "state: unsupported datatype",
    ),
    ("text state", v2_body(state=v2_input("state", "BYTES", ["1.0"] * 39)), 400, "state: expected"),
    ("NaN state", v2_body(state=v2_input("state", "FP32", [float("nan")] * 39)), 400, "state: contains NaN"),
    (
        "huge state",
        v2_body(state=v2_input("state", "FP32", [1e30] * 39)),
        400,
        "state: values must be within",
    ),
    ("empty images", v2_body(images=v2_input("images", "UINT8", [], [0, 2, 16, 16, 3])), 400, "images:"),
    ("missing state", v2_body(state=None), 400, "state: missing input"),
    (
        "bad token",
        v2_body(session_token=v2_input("session_token", "BYTES", ["x" * 500])),
        400,
        "session_token",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_bad_rest_requests_are_4xx_naming_the_input(
    client: TestClient, body: Any, status: int, message: str
) -> None:
    """Each of these was a 500 (OverflowError, IndexError, AttributeError, ValueError) echoing
    `ExceptionType : message`, or a NaN action with a 200 (huge state)."""
    content = body if isinstance(body, str) else json.dumps(body)  # json.dumps writes NaN as NaN
    response = client.post(INFER, content=content, headers=AUTH | {"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error
    assert "Error" not in error and "Traceback" not in error


def test_a_malformed_binary_body_is_a_400(client: TestClient) -> None:
    """KServe's binary tensor extension: its decoder's KeyError/ValueError used to be a 500."""
    headers = AUTH | {"content-type": "application/octet-stream"}
    for length, content in (("abc", b"{}"), ("2", b"{}"), ("11", b'{"inputs":1}xx'), ("5", b"\xff\xfe\x00")):
        response = client.post(
            INFER, content=content, headers=headers | {"inference-header-content-length": length}
        )
        assert 400 <= response.status_code < 500, response.text
        assert "Error" not in response.json()["error"]


def test_a_server_fault_is_a_generic_500_logged_not_echoed(
    client: TestClient,
    predictor: WAMPredictor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert predictor.engine is not None

    def broken(request: object) -> None:
        raise RuntimeError("secret internals at /srv/model")

    monkeypatch.setattr(predictor.engine, "submit", broken)
    response = client.post(INFER, json=v2_body(), headers=AUTH)
    assert response.status_code == 500 and response.json() == {"error": INTERNAL_ERROR}
    assert "secret internals" in caplog.text  # the operator sees it; the client does not
    with connect(client) as ws:
        ws_reply(ws)
        ws.send_bytes(bytes(packb(obs())))
        reply = ws_reply(ws)
        assert isinstance(reply, str) and "secret" not in reply and reply.startswith("server:")
        monkeypatch.undo()
        ws.send_bytes(bytes(packb(obs())))  # the connection survived the fault
        assert ws_reply(ws)["actions"].shape == (8, 4)


def test_non_finite_actions_are_an_error_on_both_protocols(tmp_path: Path) -> None:
    """A broken action head: REST answers a 500 that says so, the websocket an error frame on a
    connection that stays open (the exception used to escape the handler and drop it)."""
    predictor = WAMPredictor("wam", str(nan_policy(tmp_path)))
    predictor.load()
    try:
        with TestClient(policy_app(predictor), raise_server_exceptions=False) as client:
            response = client.post(INFER, json=v2_body())
            assert response.status_code == 500
            assert response.json() == {"error": "policy: the model produced non-finite actions"}
            with client.websocket_connect("/") as ws:
                ws_reply(ws)
                for _ in range(2):
                    ws.send_bytes(bytes(packb(obs())))
                    assert ws_reply(ws) == "policy: the model produced non-finite actions"
    finally:
        predictor.stop()


# Websocket errors --------------------------------------------------------------------------------


def test_websocket_text_frames_and_ragged_images_get_an_error_and_the_connection_stays(
    client: TestClient,
) -> None:
    """Both used to drop the connection without a close frame (KeyError on `bytes`; a
    ValueError escaping `_answer`)."""
    bad: list[tuple[Any, str]] = [
        ("hello", "message: expected a binary msgpack-numpy frame"),
        (packb(obs(images=[[1, 2], [3]])), "images: expected a rectangular numeric array"),
        (packb(obs(state=np.array(["1.5"] * 39))), "state: expected a numeric array"),
        (packb(obs(state=np.array(["2026-01-01"] * 39, "datetime64[D]"))), "state: expected a numeric array"),
        (packb(obs(state=np.ones(39, bool))), "state: expected integers or floats"),
        (packb(obs(state=np.full(39, 1e30))), "state: values must be within +-1e+06, got 1e+30 at index 0"),
        (packb(obs(images=np.zeros((0, 2, 16, 16, 3), np.uint8))), "images: between 1 and 64 frames"),
        (packb(obs(session_token=7)), "session_token: expected a string"),
    ]
    with connect(client) as ws:
        ws_reply(ws)
        for message, expected in bad:
            if isinstance(message, str):
                ws.send_text(message)
            else:
                ws.send_bytes(bytes(message))
            reply = ws_reply(ws)
            assert isinstance(reply, str) and expected in reply, reply
        ws.send_bytes(bytes(packb(obs(state=np.ones(39, ">f4")))))  # big-endian is fine
        assert ws_reply(ws)["actions"].shape == (8, 4)


def test_the_websocket_handler_uses_the_configured_message_limit(predictor: WAMPredictor) -> None:
    with (
        TestClient(policy_app(predictor, max_message_bytes=4096)) as client,
        client.websocket_connect("/") as ws,
    ):
        ws_reply(ws)
        ws.send_bytes(bytes(packb(obs(images=np.zeros((2, 32, 32, 3), np.uint8)))))
        assert "exceeds the 4096-byte limit" in ws_reply(ws)
        ws.send_bytes(bytes(packb(obs())))  # 16x16 frames fit
        assert ws_reply(ws)["actions"].shape == (8, 4)


# Sessions belong to their owner ------------------------------------------------------------------


def test_websocket_sessions_belong_to_their_connection(client: TestClient, predictor: WAMPredictor) -> None:
    """Another connection sending the same session_id (or none, as openpi's clients do) can
    neither reset nor write into this connection's session."""
    with connect(client) as a, connect(client) as b:
        ws_reply(a), ws_reply(b)
        for session in ("shared", None):
            a.send_bytes(bytes(packb(obs(session))))
            first = ws_reply(a)
            assert first["chunk_index"] == 1
            a.send_bytes(bytes(packb(obs(session))))
            assert ws_reply(a)["chunk_index"] == 2
            b.send_bytes(bytes(packb({"endpoint": "reset", "session_id": session or "default"})))
            assert ws_reply(b)["reset"] is True
            b.send_bytes(bytes(packb(obs(session, images=np.full((4, 2, 16, 16, 3), 255, np.uint8)))))
            theirs = ws_reply(b)
            assert theirs["chunk_index"] == 1 and theirs["session_token"] != first["session_token"]
            a.send_bytes(bytes(packb(obs(session))))
            assert ws_reply(a)["chunk_index"] == 3  # untouched by b's reset and frames
    engine = predictor.engine
    assert isinstance(engine, PolicyEngine)
    owned = engine.sessions.get((first["session_token"], "default"))
    assert owned is not None and owned.chunk_index == 3


def test_a_websocket_session_carries_over_a_reconnect_with_its_token(client: TestClient) -> None:
    with connect(client) as ws:
        ws_reply(ws)
        ws.send_bytes(bytes(packb(obs("roam"))))
        token = ws_reply(ws)["session_token"]
    with connect(client) as ws:
        ws_reply(ws)
        ws.send_bytes(bytes(packb(obs("roam", session_token=token))))
        reply = ws_reply(ws)
        assert reply["chunk_index"] == 2 and reply["session_token"] == token
        ws.send_bytes(bytes(packb({"endpoint": "reset", "session_id": "roam", "session_token": token})))
        ws_reply(ws)
        ws.send_bytes(bytes(packb(obs("roam", session_token=token))))
        assert ws_reply(ws)["chunk_index"] == 1


def test_rest_sessions_belong_to_their_token(client: TestClient) -> None:
    """A request without the session's token (the first reply's) starts its own session: it
    can neither reset nor write into another client's session of the same id."""

    def infer(token: str | None = None, **extra: Any) -> dict[str, Any]:
        if token is not None:
            extra["session_token"] = v2_input("session_token", "BYTES", [token])
        response = client.post(INFER, json=v2_body("arm-1", **extra), headers=AUTH)
        assert response.status_code == 200, response.text
        params: dict[str, Any] = response.json()["parameters"]
        return params

    first = infer()
    token = first["session_token"]
    assert first["chunk_index"] == 1 and len(token) >= 16
    assert infer(token)["chunk_index"] == 2
    reset = v2_input("reset", "BOOL", [True])
    other = infer(reset=reset)  # another robot, same session id, no token: a session of its own
    assert other["chunk_index"] == 1 and other["session_token"] != token
    assert infer("guessed-token", reset=reset)["chunk_index"] == 1
    assert infer(token)["chunk_index"] == 3  # untouched
    assert infer(token, reset=reset)["chunk_index"] == 1  # its owner may reset it


# No process-wide changes -------------------------------------------------------------------------


def test_serve_leaves_kserve_as_it_is_for_other_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` gets its app, bind address and websocket limits through subclasses: while it
    serves, KServe's RESTServer and module-level app are unchanged, and what it serves is gated."""
    import asyncio
    import signal

    import httpx
    import uvicorn
    from kserve import model_server
    from kserve.protocol.rest import server as kserve_rest

    from wamfleet.serving.server import serve

    original = (kserve_rest.RESTServer.__init__, kserve_rest.RESTServer.create_application)
    kserve_routes = list(model_server.app.routes)
    seen: dict[str, Any] = {}

    async def answer(self: uvicorn.Server, sockets: object = None) -> None:  # instead of listening
        seen["kserve"] = (kserve_rest.RESTServer.__init__, kserve_rest.RESTServer.create_application)
        seen["another server's host"] = kserve_rest.RESTServer(
            "kserve.model_server:app", None, None, 0
        ).config.host
        seen["config"] = (self.config.host, self.config.ws_max_size, self.config.ws_per_message_deflate)
        transport = httpx.ASGITransport(app=self.config.loaded_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy") as client:
            seen["ready"] = (await client.get("/v2/health/ready")).status_code
            seen["infer without a key"] = (await client.post(INFER, json=v2_body("s"))).status_code
            seen["infer"] = (await client.post(INFER, json=v2_body("s"), headers=AUTH)).status_code
            seen["v1"] = (await client.post("/v1/models/wam:predict", json={}, headers=AUTH)).status_code

    monkeypatch.setattr(uvicorn.Server, "serve", answer)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    loop_policy = asyncio.get_event_loop_policy()
    predictor = WAMPredictor("wam", str(tiny_policy(tmp_path / "p")))
    try:
        serve(predictor, host="127.0.0.1", port=0, api_key=KEY, max_message_bytes=1 << 20)
    finally:
        predictor.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert asyncio.get_event_loop_policy() is loop_policy
    assert seen.pop("kserve") == original
    assert seen == {
        "another server's host": "0.0.0.0",
        "config": ("127.0.0.1", 1 << 20, False),
        "ready": 200,
        "infer without a key": 401,
        "infer": 200,
        "v1": 404,
    }
    assert list(model_server.app.routes) == kserve_routes
