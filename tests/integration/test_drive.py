"""Robots under a served policy: both clients, an autonomous episode into the spool, closed-loop
evaluation from the CLI, and a dead server that leaves the robot holding still instead of crashing."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from tests.integration.test_serving import API_KEY
from tests.support.serve import serve_subprocess
from tests.unit.serving.policy_support import tiny_policy
from wamfleet.fleet_agent.chunk_runner import ActionChunkRunner
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.policy_client import (
    ActionChunk,
    PolicyClient,
    PolicyError,
    RestPolicyClient,
    WebsocketPolicyClient,
    open_policy_client,
)
from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.cli.main import app
from wamfleet.platform.net import free_port

# Real `wamfleet serve` subprocesses and wall-clock control rates: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

cli = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`wamfleet serve` on a tiny random policy, on 127.0.0.1 (as in test_serving)."""
    policy = tiny_policy(tmp_path_factory.mktemp("drive-serve") / "policy")
    log = tmp_path_factory.mktemp("drive-serve-log") / "serve.log"
    with serve_subprocess(policy, extra_args=["--api-key", API_KEY], log_path=log) as url:
        yield url


def ws_url(server: str) -> str:
    return server.replace("http://", "ws://")


def observation(frames: int = 0) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    rng = np.random.default_rng(frames)
    shape = (frames, 2, 96, 96, 3) if frames else (2, 96, 96, 3)
    return rng.integers(0, 255, shape, dtype=np.uint8), rng.normal(size=39).astype(np.float32)


def test_websocket_client_gets_chunks_and_names_errors(server: str) -> None:
    with WebsocketPolicyClient(ws_url(server), api_key=API_KEY) as client:
        meta = client.metadata()
        assert (meta.action_dim, meta.actions_per_chunk, meta.video_frames_per_chunk) == (4, 8, 4)
        images, state = observation()
        first = client.infer("ws-1", "reach the goal", images, state)
        assert first.actions.shape == (8, 4) and first.actions.dtype == np.float32
        assert first.policy_version == meta.policy_version and first.chunk_index == 1
        assert first.latency_s > 0 and first.server_timing["denoise_ms"] > 0
        frames, _ = observation(4)  # the executed chunk's frames, then the next chunk
        assert client.infer("ws-1", "reach the goal", frames, state).chunk_index == 2
        client.reset("ws-1")
        assert client.infer("ws-1", "reach the goal", images, state).chunk_index == 1
        with pytest.raises(PolicyError, match="state: expected 39 values"):
            client.infer("ws-1", "reach the goal", images, state[:3])
        # The connection survives a refused request (which does not advance the session).
        assert client.infer("ws-1", "reach the goal", images, state).chunk_index == 2
        # A dropped connection is reopened once, and the session carries on server-side.
        assert client._conn is not None
        client._conn.close()
        assert client.infer("ws-1", "reach the goal", images, state).chunk_index == 3
    with pytest.raises(PolicyError, match="HTTP 403"):
        WebsocketPolicyClient(ws_url(server), api_key="wrong").metadata()


def test_rest_client_gets_chunks_and_learns_metadata_from_the_first_reply(server: str) -> None:
    client = open_policy_client(server, api_key=API_KEY, timeout_s=30)
    assert isinstance(client, RestPolicyClient)
    with client:
        with pytest.raises(PolicyError, match="first reply"):
            client.metadata()
        images, state = observation()
        chunk = client.infer("rest-1", "reach the goal", images, state)
        assert chunk.actions.shape == (8, 4) and chunk.chunk_index == 1 and chunk.policy_version
        meta = client.metadata()
        assert (meta.action_dim, meta.actions_per_chunk, meta.state_dim) == (4, 8, 39)
        assert meta.policy_version == chunk.policy_version
        frames, _ = observation(4)
        assert (
            client.infer("rest-1", "reach the goal", frames, state).chunk_index == 2
        )  # its token went along
        client.reset("rest-1")
        assert client.infer("rest-1", "reach the goal", images, state).chunk_index == 1
        with pytest.raises(PolicyError, match="HTTP 400: state: expected 39 values, got 3"):
            client.infer("rest-1", "reach the goal", images, state[:3])
    with (
        open_policy_client(server, timeout_s=30) as keyless,
        pytest.raises(PolicyError, match="HTTP 401: missing or wrong Api-Key"),
    ):
        keyless.infer("rest-1", "reach the goal", images, state)


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_two_robots_with_one_session_id_keep_their_own_sessions(server: str, scheme: str) -> None:
    """The same key and session_id on two clients: one's reset and frames never reach the
    other's session (both clients send their session's token back)."""
    url = ws_url(server) if scheme == "ws" else server
    images, state = observation()
    frames, _ = observation(4)
    with (
        open_policy_client(url, api_key=API_KEY, timeout_s=30) as mine,
        open_policy_client(url, api_key=API_KEY, timeout_s=30) as theirs,
    ):
        assert mine.infer("shared", "reach the goal", images, state).chunk_index == 1
        assert mine.infer("shared", "reach the goal", frames, state).chunk_index == 2
        theirs.reset("shared")
        assert theirs.infer("shared", "reach the goal", np.zeros_like(frames), state).chunk_index == 1
        assert mine.infer("shared", "reach the goal", frames, state).chunk_index == 3


def test_agent_drive_records_an_autonomous_episode(server: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    result = cli.invoke(
        app,
        [
            "agent",
            "drive",
            "--endpoint",
            ws_url(server),
            "--task",
            "reach-v3",
            "--episodes",
            "1",
            "--max-steps",
            "20",
            "--spool-dir",
            str(spool_dir),
            "--robot-id",
            "sim-auto",
            "--api-key",
            API_KEY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recorded 1 of 1 episodes" in result.output
    with WebsocketPolicyClient(ws_url(server), api_key=API_KEY) as client:
        version = client.metadata().policy_version
    assert f"policy {version}" in result.output
    ready = list(Spool(spool_dir).ready())
    assert len(ready) == 1
    with EpisodeReader(ready[0]) as reader:
        manifest = reader.manifest
        assert manifest.source == "autonomous"
        assert manifest.policy_version == version
        assert manifest.robot_id == "sim-auto" and manifest.tags["env"] == "reach-v3"
        assert manifest.outcome.success is not None and manifest.outcome.progress is not None
        assert manifest.num_frames == 20
        actions = reader.actions()
        assert actions is not None and actions.shape == (20, 4)
        assert np.any(actions != 0)  # the policy acted (a held-still episode is all zeros)
        assert reader.frame(0)["exterior"].shape == (96, 96, 3)


def test_eval_closed_loop_prints_success_rate_latency_and_rate(server: str) -> None:
    args = ["eval", "closed-loop", "--endpoint", ws_url(server), "--tasks", "reach-v3"]
    result = cli.invoke(
        app,
        [*args, "--episodes", "1", "--max-steps", "16"],
        env={"WAMFLEET_POLICY_API_KEY": API_KEY, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"reach-v3: success rate \d+% \(\d/1\)", result.output), result.output
    assert re.search(r"latency p50 [\d.]+ ms, p99 [\d.]+ ms", result.output), result.output
    # On the simulated clock the rate is the target by construction: labelled, not "achieved".
    assert "control rate achieved" not in result.output, result.output
    assert re.search(r"simulated clock: 16 steps, \d+ safe actions", result.output), result.output
    assert "measured with --realtime" in result.output, result.output
    realtime = cli.invoke(
        app,
        [*args, "--episodes", "1", "--max-steps", "16", "--realtime"],
        env={"WAMFLEET_POLICY_API_KEY": API_KEY, "COLUMNS": "200"},
    )
    assert realtime.exit_code == 0, realtime.output
    rate = re.search(
        r"control rate achieved on the wall clock ([\d.]+) Hz \(target 15.0 Hz, \d+ late steps\)",
        realtime.output,
    )
    assert rate and 0 < float(rate.group(1)) <= 15.5, realtime.output


class StillRobot:
    def __init__(self) -> None:
        self.actions: list[NDArray[np.float32]] = []

    def observe(self) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        return np.zeros((2, 96, 96, 3), np.uint8), np.zeros(39, np.float32)

    def act(self, action: NDArray[np.float32]) -> None:
        self.actions.append(action)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts TCP connections (the kernel does) and never answers: every request times out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("dead", ["unreachable", "silent"])
def test_a_dead_server_yields_safe_actions_not_a_crash(dead: str, black_hole: str) -> None:
    url = f"ws://127.0.0.1:{free_port()}" if dead == "unreachable" else black_hole
    robot = StillRobot()
    with WebsocketPolicyClient(url, timeout_s=0.2) as client:
        runner = ActionChunkRunner(client, robot, control_hz=15.0, action_dim=4, retry_interval_s=0.3)
        stats = runner.run_episode("reach the goal", "dead", max_steps=12)
    assert stats.steps == 12 and stats.safe_actions == 12 and stats.chunks == 0
    assert all(np.array_equal(a, np.zeros(4, np.float32)) for a in robot.actions)
    expected = "unavailable" if dead == "unreachable" else "timeout"
    assert {e.reason for e in stats.events} == {expected}
    assert stats.request_failures and 1 < stats.requests < 12


def test_drive_against_a_silent_server_records_nothing_and_returns(black_hole: str, tmp_path: Path) -> None:
    from wamfleet.fleet_agent.sim.drive import drive

    results = drive(
        black_hole, "reach-v3", 1, spool_dir=tmp_path, robot_id="sim-dead", max_steps=10, timeout_s=0.2
    )
    assert len(results) == 1 and results[0].episode_id is None
    assert results[0].stats.safe_actions == 10
    assert Spool(tmp_path).counts() == {"recording": 0, "ready": 0, "uploaded": 0, "rejected": 0}


def test_a_robot_assigned_a_stopped_endpoint_picks_its_cameras_without_crashing() -> None:
    """A rollback can stop a server between a robot's assignment and its first connect; the
    robot process used to die on the metadata call (seen in the rollback e2e)."""
    from wamfleet.fleet_agent.sim.drive import policy_cameras, reachable_metadata
    from wamfleet.fleet_agent.sim.sawyer import DEFAULT_CAMERAS

    with open_policy_client(f"ws://127.0.0.1:{free_port('127.0.0.1')}", timeout_s=2.0) as client:
        assert reachable_metadata(client) is None
        assert policy_cameras(reachable_metadata(client)) == DEFAULT_CAMERAS


class _TimedPolicy(PolicyClient):
    """Zero actions after `latency_s` of real time: a fast or a slow policy server."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s

    def metadata(self) -> Any:
        raise PolicyError("metadata: not known before the first reply")

    def infer(
        self, session_id: str, instruction: str, images: Any, state: Any, frame_index: int | None = None
    ) -> ActionChunk:
        import time

        time.sleep(self.latency_s)
        return ActionChunk(np.zeros((8, 4), np.float32), "timed", 1, self.latency_s)

    def reset(self, session_id: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_control_rate_is_measured_on_the_wall_clock_and_a_slow_server_lowers_it() -> None:
    """On the simulated clock the rate equals the target by construction, so it is not printed as
    measured; on the wall clock a server slower than a chunk leaves steps without policy actions."""
    from wamfleet.fleet_agent.sim.drive import evaluate_closed_loop

    def run(latency_s: float, realtime: bool) -> Any:
        return evaluate_closed_loop(
            _TimedPolicy(latency_s), ["reach-v3"], 1, max_steps=45, image_size=16, realtime=realtime
        )

    simulated = run(0.0, realtime=False)
    assert simulated.clock == "simulated" and simulated.control_rate_hz == pytest.approx(15.0)
    fast, slow = run(0.0, realtime=True), run(1.2, realtime=True)
    assert fast.clock == slow.clock == "wall"
    assert 10.0 < fast.control_rate_hz <= 15.5  # it holds the robot's rate, never runs ahead
    assert fast.policy_rate_hz > 0.75 * fast.control_rate_hz
    # 8-action chunks last 0.53 s at 15 Hz; replies taking 1.2 s leave the queue empty for long.
    assert slow.safe_actions > 10
    assert slow.policy_rate_hz < 0.6 * fast.policy_rate_hz
