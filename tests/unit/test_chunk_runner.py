"""The chunk runner against a scripted policy and a trivial robot: refills, merging, safe actions."""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from numpy.typing import ArrayLike, NDArray

from wamfleet.fleet_agent.chunk_runner import ActionChunkRunner
from wamfleet.fleet_agent.policy_client import (
    ActionChunk,
    PolicyClient,
    PolicyError,
    PolicyTimeout,
)
from wamfleet.platform.contracts.protocol import PolicyMetadata

A, ACTION_DIM, VIDEO_FRAMES, HZ = 8, 2, 4, 10.0


@dataclass
class Reply:
    """One scripted answer: a chunk of `value` (or one per step), or an exception, after `latency_s`."""

    value: float | list[float] = 0.0
    latency_s: float = 0.05
    raises: Exception | None = None
    sleep: bool = False  # really wait (realtime tests), else only report the latency


@dataclass
class Request:
    images: NDArray[np.uint8]
    state: NDArray[np.float32]
    started: float
    frame_index: int | None = None


@dataclass
class ScriptedPolicy(PolicyClient):
    replies: list[Reply]
    default: Reply = field(default_factory=Reply)
    requests: list[Request] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(
            policy_version="v-test",
            embodiment="toy",
            cameras=["cam"],
            state_dim=1,
            action_dim=ACTION_DIM,
            actions_per_chunk=A,
            action_rate_hz=HZ,
            video_frames_per_chunk=VIDEO_FRAMES,
        )

    def infer(
        self,
        session_id: str,
        instruction: str,
        images: ArrayLike,
        state: ArrayLike,
        frame_index: int | None = None,
    ) -> ActionChunk:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.requests.append(
                Request(np.asarray(images), np.asarray(state), time.monotonic(), frame_index)
            )
            reply = self.replies.pop(0) if self.replies else self.default
        try:
            if reply.sleep:
                time.sleep(reply.latency_s)
            if reply.raises is not None:
                raise reply.raises
            values = np.broadcast_to(np.asarray(reply.value, np.float32), (A,))
            actions = np.repeat(values[:, None], ACTION_DIM, axis=1).astype(np.float32)
            return ActionChunk(actions, "v-test", len(self.requests), reply.latency_s, {})
        finally:
            with self.lock:
                self.in_flight -= 1

    def reset(self, session_id: str) -> None:
        self.resets.append(session_id)

    def close(self) -> None:
        pass


class ToyRobot:
    """Its image is filled with the step number, so the test can tell which frames were sent."""

    def __init__(self) -> None:
        self.step = 0
        self.actions: list[NDArray[np.float32]] = []

    def observe(self) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        return np.full((1, 4, 4, 3), self.step, np.uint8), np.array([self.step], np.float32)

    def act(self, action: NDArray[np.float32]) -> None:
        self.actions.append(np.asarray(action))
        self.step += 1

    def first_values(self) -> list[float]:
        return [round(float(a[0]), 6) for a in self.actions]


def runner(policy: ScriptedPolicy, robot: ToyRobot, **kwargs: object) -> ActionChunkRunner:
    return ActionChunkRunner(policy, robot, refill_threshold=4, **kwargs)  # type: ignore[arg-type]


def test_refills_before_the_queue_runs_out() -> None:
    policy, robot = ScriptedPolicy([]), ToyRobot()
    stats = runner(policy, robot).run_episode("do it", "s", max_steps=20)
    # 8 actions per chunk, refill below 4 queued, on the video lattice (every 2nd step): 3 are
    # left at step 5, so it asks at step 6, then every 6 steps.
    assert stats.request_steps == [0, 6, 12, 18]
    assert [int(r.state[0]) for r in policy.requests] == [0, 6, 12, 18]
    assert stats.safe_actions == 0 and stats.events == []
    assert stats.steps == 20 and stats.chunks == 4
    assert policy.resets == ["s"]
    assert stats.policy_version == "v-test"


def test_latest_merge_lets_the_newest_chunk_win() -> None:
    policy = ScriptedPolicy([Reply(1.0), Reply(3.0, latency_s=0.15)], default=Reply(5.0, latency_s=0.15))
    robot = ToyRobot()
    runner(policy, robot, merge="latest").run_episode("do it", "s", max_steps=10)
    # Asked at step 6 with a 0.15 s latency at 10 Hz: it lands at step 8 (6.0 + 1.5 periods),
    # so chunk 1 runs steps 0..7 and chunk 2 (for steps 6..13) takes over from step 8.
    assert robot.first_values() == [1.0] * 8 + [3.0] * 2


def test_weighted_merge_averages_overlapping_proposals() -> None:
    decay = math.log(2.0)  # the older chunk weighs 1/2 of the newer one
    per_step = [10.0 * i for i in range(A)]  # chunk 2 proposes a different value per step
    policy = ScriptedPolicy(
        [Reply(1.0), Reply(per_step, latency_s=0.05)], default=Reply(7.0, latency_s=100.0)
    )
    robot = ToyRobot()
    runner(policy, robot, merge="weighted", decay=decay).run_episode("do it", "s", max_steps=15)
    values = robot.first_values()
    assert values[:7] == [1.0] * 7  # chunk 2 (observation at step 6) lands at step 7
    # Step 7: both chunks propose; chunk 2's proposal for step s is 10 * (s - 6).
    assert values[7] == pytest.approx((0.5 * 1.0 + 1.0 * 10.0) / 1.5)
    # Steps 8..13: only chunk 2 covers them; step 14: nothing (the third request is still out).
    assert values[8:14] == [20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    assert values[14] == 0.0


def test_latest_merge_on_the_same_overlap() -> None:
    per_step = [10.0 * i for i in range(A)]
    policy = ScriptedPolicy([Reply(1.0), Reply(per_step)], default=Reply(7.0, latency_s=100.0))
    robot = ToyRobot()
    runner(policy, robot, merge="latest").run_episode("do it", "s", max_steps=14)
    assert robot.first_values() == [1.0] * 7 + [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]


def test_timeout_holds_the_safe_action_and_reports_it() -> None:
    timeout = Reply(raises=PolicyTimeout("infer: no reply within 0.1s"), latency_s=0.1)
    policy = ScriptedPolicy([Reply(1.0)], default=timeout)
    robot = ToyRobot()
    stats = runner(policy, robot, retry_interval_s=0.2).run_episode("do it", "s", max_steps=16)
    values = robot.first_values()
    assert values[:8] == [1.0] * 8  # the chunk that did arrive runs to its end
    assert values[8:] == [0.0] * 8  # then the default safe action: zeros, hold still
    assert stats.safe_actions == 8
    assert [e.step for e in stats.events] == list(range(8, 16))
    assert {e.reason for e in stats.events} == {"timeout"}
    assert "no reply" in stats.events[0].detail
    assert stats.request_failures and stats.request_failures[0].reason == "timeout"
    # Retries wait retry_interval_s after each failure instead of asking every step.
    assert stats.requests < 8


def test_an_error_before_any_chunk_gives_a_configured_safe_action() -> None:
    policy = ScriptedPolicy([], default=Reply(raises=PolicyError("state: expected 1 values")))
    robot = ToyRobot()
    stats = ActionChunkRunner(policy, robot, safe_action=lambda state: [-state[0], 0.0]).run_episode(
        "do it", "s", max_steps=3
    )
    assert robot.first_values() == [0.0, -1.0, -2.0]
    assert stats.safe_actions == 3 and stats.chunks == 0
    assert {e.reason for e in stats.events} == {"error"}
    assert "state: expected 1 values" in stats.events[0].detail


def test_frames_are_subsampled_to_the_video_rate_and_sent_with_the_next_request() -> None:
    policy, robot = ScriptedPolicy([]), ToyRobot()
    runner(policy, robot).run_episode("do it", "s", max_steps=16)
    # One frame every 8 / 4 = 2 steps from the episode's first, the current frame last, with
    # the video-rate index of the last one: real frames at the time they were seen, no repeats.
    sent = [[int(frame[0, 0, 0, 0]) for frame in r.images] for r in policy.requests]
    assert sent == [[0], [2, 4, 6], [8, 10, 12]]
    assert [r.frame_index for r in policy.requests] == [0, 3, 6]
    assert all(r.images.shape[1:] == (1, 4, 4, 3) for r in policy.requests)


def test_frames_of_a_failed_request_are_sent_again_with_the_next() -> None:
    error = Reply(raises=PolicyError("server busy"))
    policy, robot = ScriptedPolicy([Reply(1.0), error]), ToyRobot()
    runner(policy, robot, retry_interval_s=0.0).run_episode("do it", "s", max_steps=9)
    sent = [[int(frame[0, 0, 0, 0]) for frame in r.images] for r in policy.requests]
    assert sent[:3] == [[0], [2, 4, 6], [2, 4, 6, 8]]  # the server drops what it already has
    assert [r.frame_index for r in policy.requests][:3] == [0, 3, 4]


def test_simulated_clock_control_rate_is_steps_over_simulated_time() -> None:
    policy, robot = ScriptedPolicy([]), ToyRobot()
    started = time.monotonic()
    stats = runner(policy, robot).run_episode("do it", "s", max_steps=50)
    wall = time.monotonic() - started
    assert stats.elapsed_s == pytest.approx(50 / HZ)
    assert stats.control_rate_hz == pytest.approx(stats.steps / stats.elapsed_s)
    assert stats.control_rate_hz == pytest.approx(HZ)
    assert wall < stats.elapsed_s / 2  # nothing slept
    assert stats.latency_p50_s == pytest.approx(0.05) and stats.latency_p99_s == pytest.approx(0.05)


def test_done_ends_the_episode() -> None:
    policy, robot = ScriptedPolicy([]), ToyRobot()
    stats = runner(policy, robot).run_episode("do it", "s", max_steps=50, done=lambda: robot.step >= 7)
    assert stats.steps == 7


@pytest.mark.parametrize("realtime", [False, True])
def test_never_a_second_request_while_one_is_in_flight(realtime: bool) -> None:
    # Replies take 3 control periods at 50 Hz while the queue would ask again every step.
    slow = Reply(2.0, latency_s=0.06, sleep=True)
    policy = ScriptedPolicy([], default=slow)
    robot = ToyRobot()
    stats = ActionChunkRunner(
        policy, robot, control_hz=50.0, refill_threshold=A, realtime=realtime
    ).run_episode("do it", "s", max_steps=30)
    assert policy.max_in_flight == 1
    # After the warm start (awaited before step 0), each request waited for the previous reply.
    assert stats.request_steps[:2] == [0, 2]  # the next video frame after the warm start
    assert np.all(np.diff(stats.request_steps[1:]) >= 3), stats.request_steps
    starts = [r.started for r in policy.requests]
    assert all(b - a >= 0.06 - 1e-3 for a, b in itertools.pairwise(starts))
    assert stats.safe_actions == 0  # 8-action chunks cover a 3-step latency
    if realtime:  # it sleeps to hold the rate, never runs ahead of it (slack for a loaded machine)
        assert stats.elapsed_s >= 30 / 50.0 - 1e-3
        assert 30.0 < stats.control_rate_hz <= 50.0 * 1.01
