"""openpi's DROID client, unchanged, against `wamfleet serve` on the built-in `droid` embodiment.

The published `openpi-client` runs from its own venv (it pins numpy<2) and sends exactly what
openpi's examples/droid/main.py sends: `observation/exterior_image_1_left` and
`observation/wrist_image_left` (camera frames resized with padding to 224x224 by
`image_tools.resize_with_pad`), `observation/joint_position` (7), `observation/gripper_position`
(1) and `prompt`, with no session id and no API key. Two such clients at once get a session each.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.openpi_venv import openpi_python, run_client
from tests.support.serve import serve_subprocess
from tests.unit.serving.policy_support import tiny_droid_policy

DROID_CLIENT = """
import json, sys, time
import numpy as np
from openpi_client import image_tools, websocket_client_policy

host, port, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start_at = float(sys.argv[5])
policy = websocket_client_policy.WebsocketClientPolicy(host=host, port=port)
meta = policy.get_server_metadata()
rng = np.random.default_rng(seed)
# What the robot's cameras give (ZED at 720p), resized on the robot as openpi's DROID example does.
exterior = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
wrist = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
time.sleep(max(0.0, start_at - time.time()))  # concurrent clients start together
replies = []
for step in range(steps):
    request_data = {
        "observation/exterior_image_1_left": image_tools.resize_with_pad(exterior, 224, 224),
        "observation/wrist_image_left": image_tools.resize_with_pad(wrist, 224, 224),
        "observation/joint_position": rng.normal(size=7) * 0.1,
        "observation/gripper_position": np.array([0.02 * step]),
        "prompt": "put the marker in the bowl",
    }
    assert request_data["observation/exterior_image_1_left"].shape == (224, 224, 3)
    replies.append(policy.infer(request_data))
print(json.dumps({
    "meta": meta,
    "numpy": np.__version__,
    "actions": [r["actions"].tolist() for r in replies],
    "dtype": str(replies[0]["actions"].dtype),
    "chunk_index": [int(r["chunk_index"]) for r in replies],
    "session_id": [r["session_id"] for r in replies],
    "session_token": [r["session_token"] for r in replies],
}))
"""


@pytest.fixture(scope="module")
def openpi() -> Path:
    return openpi_python()


@pytest.fixture(scope="module")
def droid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`wamfleet serve` on a tiny random-weight policy for the droid embodiment, on 127.0.0.1."""
    policy = tiny_droid_policy(tmp_path_factory.mktemp("droid") / "policy")
    log = tmp_path_factory.mktemp("droid-log") / "serve.log"
    with serve_subprocess(policy, log_path=log) as url:
        yield url


def client_args(server: str, seed: int, steps: int, start_at: float = 0.0) -> list[str]:
    host, port = server.removeprefix("http://").rsplit(":", 1)
    return [host, port, str(seed), str(steps), str(start_at)]


def parse(stdout: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.slow
def test_openpis_droid_client_gets_8_dim_actions_from_a_served_droid_policy(
    openpi: Path, droid_server: str
) -> None:
    run = run_client(openpi, DROID_CLIENT, *client_args(droid_server, seed=0, steps=3))
    assert run.returncode == 0, run.stderr[-3000:]
    out = parse(run.stdout)
    assert out["numpy"].startswith("1.")
    meta = out["meta"]
    assert meta["embodiment"] == "droid" and meta["action_dim"] == 8 and meta["state_dim"] == 8
    assert meta["action_rate_hz"] == 15.0
    keys = [s["key"] for s in meta["observation"]["images"]] + [
        s["key"] for s in meta["observation"]["state"]
    ]
    assert keys == [
        "observation/exterior_image_1_left",
        "observation/exterior_image_2_left",
        "observation/wrist_image_left",
        "observation/joint_position",
        "observation/gripper_position",
    ]
    assert [g["name"] for g in meta["action_layout"]] == ["joint_velocity", "gripper_position"]
    actions = np.asarray(out["actions"])
    assert actions.shape == (3, 8, 8)  # 3 chunks of 8 steps of (7 joint velocities + gripper)
    assert out["dtype"] == "float32" and np.all(np.isfinite(actions))
    assert out["chunk_index"] == [1, 2, 3]  # one session for the connection, advancing


@pytest.mark.slow
def test_two_openpi_clients_without_session_ids_get_a_session_each(openpi: Path, droid_server: str) -> None:
    """Both send no session_id (openpi's never do), at the same time: each connection's chunks
    count from 1 on its own, and each cache holds only its own camera frames, so a client's
    chunks equal those of the same client run alone."""
    start_at = time.time() + 8.0  # both connected (venv python starts in ~1-2 s) before either asks
    procs = [
        subprocess.Popen(
            [str(openpi), "-c", DROID_CLIENT, *client_args(droid_server, seed, 4, start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        outputs.append(parse(stdout))
    a, b = outputs
    for out in (a, b):
        assert out["chunk_index"] == [1, 2, 3, 4]
        assert out["session_id"] == ["default"] * 4
        assert len(set(out["session_token"])) == 1
    assert a["session_token"][0] != b["session_token"][0]
    assert not np.allclose(a["actions"], b["actions"], atol=1e-6)  # different robots, different chunks
    alone = run_client(openpi, DROID_CLIENT, *client_args(droid_server, seed=1, steps=4))
    assert alone.returncode == 0, alone.stderr[-3000:]
    # Batched with the other robot or alone, the same frames give the same chunks (to batching's
    # float tolerance): nothing of the other client's frames reached this client's cache.
    np.testing.assert_allclose(a["actions"], parse(alone.stdout)["actions"], atol=1e-3)
