"""`wamfleet serve` as a robot meets it: KServe v2 REST and the openpi websocket on one port."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.unit.serving.policy_support import tiny_policy
from wamfleet.platform.contracts.protocol import packb, unpackb
from wamfleet.serving.launch import serve_subprocess

API_KEY = "robot-fleet-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`wamfleet serve` on a tiny random policy, bound to 127.0.0.1, requiring an Api-Key."""
    policy = tiny_policy(tmp_path_factory.mktemp("serve") / "policy")
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serve_subprocess(policy, extra_args=["--api-key", API_KEY], log_path=log) as url:
        yield url


def v2_body(images: np.ndarray, state: np.ndarray, session: str, reset: bool = False) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": "UINT8",
                "data": images.ravel().tolist(),
            },
            {"name": "state", "shape": list(state.shape), "datatype": "FP32", "data": state.ravel().tolist()},
            {"name": "instruction", "shape": [1], "datatype": "BYTES", "data": ["reach the goal"]},
            {"name": "session_id", "shape": [1], "datatype": "BYTES", "data": [session]},
            {"name": "reset", "shape": [1], "datatype": "BOOL", "data": [reset]},
        ]
    }


def observation(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8), rng.normal(size=39).astype(np.float32)


def recv(conn: ClientConnection) -> Any:
    data = conn.recv()
    assert isinstance(data, bytes), data  # a text frame is an error message
    return unpackb(data)


def ws(url: str, key: str | None = API_KEY) -> ClientConnection:
    headers = {"Authorization": f"Api-Key {key}"} if key else None
    return connect(url.replace("http", "ws"), additional_headers=headers, max_size=None)


def test_v2_and_websocket_give_the_same_actions(server: str) -> None:
    images, state = observation()
    rest = httpx.post(
        f"{server}/v2/models/wam/infer", json=v2_body(images, state, "same", reset=True), timeout=60
    )
    assert rest.status_code == 200, rest.text
    body = rest.json()
    rest_actions = np.asarray(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
    assert body["parameters"]["chunk_index"] == 1
    assert body["parameters"]["policy_version"]
    assert body["parameters"]["denoise_ms"] > 0
    with ws(server) as conn:
        meta = recv(conn)
        assert meta["action_dim"] == 4 and meta["cameras"] == ["exterior", "wrist"]
        obs = {"images": images, "state": state, "instruction": "reach the goal", "session_id": "same"}
        conn.send(packb(obs | {"reset": True}))
        reply = recv(conn)
    assert reply["actions"].shape == (8, 4)
    np.testing.assert_allclose(reply["actions"], rest_actions, atol=1e-5)


def test_websocket_session_advances_and_resets(server: str) -> None:
    images, state = observation(1)
    with ws(server) as conn:
        conn.recv()
        for expected in (1, 2, 3):
            conn.send(
                packb(
                    {"images": np.stack([images] * 4), "state": state, "prompt": "reach", "session_id": "w"}
                )
            )
            assert recv(conn)["chunk_index"] == expected
        conn.send(packb({"endpoint": "reset", "session_id": "w"}))
        assert recv(conn) == {"reset": True, "session_id": "w"}
        conn.send(packb({"images": images, "state": state, "prompt": "reach", "session_id": "w"}))
        assert recv(conn)["chunk_index"] == 1


def test_websocket_bad_input_is_named_and_the_connection_survives(server: str) -> None:
    images, state = observation(2)
    with ws(server) as conn:
        conn.recv()
        for bad, message in [
            (
                {"images": images.astype(np.float32), "state": state, "prompt": "x"},
                "images: expected dtype uint8",
            ),
            ({"images": images, "state": state[:3], "prompt": "x"}, "state: expected 39 values"),
            (
                {"images": images, "state": np.full(39, np.inf, np.float32), "prompt": "x"},
                "state: contains NaN",
            ),
            ({"state": state, "prompt": "x"}, "images: missing"),
            (
                {"images": images, "state": state, "prompt": "x", "endpoint": "dance"},
                "endpoint: unknown 'dance'",
            ),
        ]:
            conn.send(packb(bad | {"session_id": "bad"}))
            answer = conn.recv()
            assert isinstance(answer, str) and message in answer, answer
        conn.send(b"\xc1 not msgpack")
        assert "message: not msgpack-numpy" in conn.recv()
        conn.send(packb({"images": images, "state": state, "prompt": "x", "session_id": "bad"}))
        assert recv(conn)["actions"].shape == (8, 4)


def test_websocket_requires_the_api_key(server: str) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises((InvalidStatus, ConnectionError, OSError)), ws(server, key="wrong") as conn:
        conn.recv()


def test_v2_bad_input_is_a_4xx_naming_the_input(server: str) -> None:
    images, state = observation(3)
    body = v2_body(images, state[:5], "v2bad")
    response = httpx.post(f"{server}/v2/models/wam/infer", json=body, timeout=60)
    assert response.status_code == 400
    assert "state: expected 39 values, got 5" in response.text
    body = v2_body(images, state, "v2bad")
    body["inputs"] = body["inputs"][1:]  # type: ignore[index]
    response = httpx.post(f"{server}/v2/models/wam/infer", json=body, timeout=60)
    assert response.status_code == 400
    assert "images: missing input" in response.text


OPENPI_SCRIPT = """
import json, sys
import numpy as np
from openpi_client import websocket_client_policy

host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
policy = websocket_client_policy.WebsocketClientPolicy(host=host, port=port, api_key=key)
meta = policy.get_server_metadata()
rng = np.random.default_rng(0)
obs = {"images": rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8), "state": np.zeros(39, np.float32),
       "prompt": "reach the goal", "session_id": "openpi-client"}
chunks = [policy.infer(obs) for _ in range(2)]
print(json.dumps({"meta": meta, "shape": list(chunks[0]["actions"].shape),
                  "dtype": str(chunks[0]["actions"].dtype), "chunk_index": int(chunks[1]["chunk_index"]),
                  "numpy": np.__version__}))
"""


@pytest.mark.slow
def test_published_openpi_client_drives_the_server_unchanged(server: str, tmp_path: Path) -> None:
    """openpi-client pins numpy<2, so it runs from its own small venv, as a robot would."""
    import json
    import venv

    env_dir = tmp_path / "openpi-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        # openpi-client imports typing_extensions without declaring it.
        [str(python), "-m", "pip", "install", "--quiet", "openpi-client", "numpy<2", "typing_extensions"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    port = server.rsplit(":", 1)[1]
    run = subprocess.run(
        [str(python), "-c", OPENPI_SCRIPT, "127.0.0.1", port, API_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("1.")
    assert out["meta"]["action_dim"] == 4
    assert out["shape"] == [8, 4]
    assert out["dtype"] == "float32"
    assert out["chunk_index"] == 2


def test_prometheus_metrics_count_requests_and_stages(server: str) -> None:
    images, state = observation(4)
    httpx.post(f"{server}/v2/models/wam/infer", json=v2_body(images, state[:2], "metrics"), timeout=60)
    httpx.post(f"{server}/v2/models/wam/infer", json=v2_body(images, state, "metrics"), timeout=60)
    text = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'wamfleet_policy_stage_seconds_count{stage="denoise"}' in text
    assert 'wamfleet_policy_requests_total{outcome="bad_request"}' in text
    assert "wamfleet_policy_sessions " in text
    assert "wamfleet_policy_batch_size_bucket" in text
