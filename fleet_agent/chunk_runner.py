"""Closed-loop control on action chunks: execute one chunk while the next is being computed.

A World Action Model answers a whole chunk of actions per request, and a request takes longer
than one control period. The runner keeps a queue of future actions indexed by control step;
when fewer than `refill_threshold` remain, it sends the current observation in a background
thread and keeps executing. A reply for the observation at step s proposes actions for steps
s, s+1, ...; proposals for steps already executed are dropped, and the rest are merged with
the queue (as LeRobot's async inference does): `latest` lets the newest chunk win, `weighted`
averages every chunk's proposal for a step with weights exp(-decay * age in chunks).

The frames seen while a chunk runs are kept at the server's video rate (one every
actions_per_chunk / video_frames_per_chunk steps, counted from the episode's first frame) and
sent with the next request with the index of the last one, so the server writes what really
happened, at the time it happened, into its KV cache instead of its own prediction. Requests
are sent only on that lattice, so every request's frame is a video frame; frames of a failed
request are sent again with the next one (the server drops what it already has).

A robot must never stall on the network: a timeout, an error or an empty queue makes the
robot hold a safe action for that step (zeros by default: "hold still" for delta actions),
and every such step is reported with its reason.

`realtime=False` runs on a simulated clock for simulation: no sleeping, each step advances
the clock by one control period, and a reply lands at the simulated step its measured latency
says it would have, so results do not depend on how fast the simulator runs.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wamfleet.fleet_agent.policy_client import (
    ActionChunk,
    PolicyClient,
    PolicyError,
    PolicyTimeout,
    PolicyUnavailable,
)
from wamfleet.platform.contracts.protocol import PolicyMetadata

log = logging.getLogger(__name__)

Merge = Literal["latest", "weighted"]
Reason = Literal["timeout", "unavailable", "error", "empty_queue"]
SafeAction = ArrayLike | Callable[[NDArray[np.float32]], ArrayLike]


class Robot(Protocol):
    """What the runner drives: a camera/state reading and an actuator, one call per step."""

    def observe(self) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """Images uint8 [views, H, W, 3] in the policy's camera order, and the state vector."""
        ...

    def act(self, action: NDArray[np.float32]) -> None:
        """Applies one action for one control period."""
        ...


@dataclass(frozen=True)
class RunnerEvent:
    """A safe action held at `step`, or a request that failed there; `reason` says why."""

    step: int
    reason: Reason
    detail: str


class RunFigures:
    """Derived figures of a run, shared by one episode's stats and a whole evaluation."""

    steps: int
    elapsed_s: float
    latencies_s: list[float]
    safe_actions: int
    clock: Literal["wall", "simulated"]

    @property
    def control_rate_hz(self) -> float:
        """Steps per second on the run's clock: on a simulated clock this is the target by
        construction (steps x period), so only a wall-clock run measures anything."""
        return self.steps / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def policy_rate_hz(self) -> float:
        """Steps driven by the policy's own actions (not safe actions) per second."""
        return (self.steps - self.safe_actions) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def latency_p50_s(self) -> float | None:
        return percentile(self.latencies_s, 50)

    @property
    def latency_p99_s(self) -> float | None:
        return percentile(self.latencies_s, 99)


@dataclass
class EpisodeRunStats(RunFigures):
    steps: int = 0
    elapsed_s: float = 0.0  # on the runner's clock (simulated when realtime=False)
    clock: Literal["wall", "simulated"] = "simulated"
    target_rate_hz: float = 0.0
    requests: int = 0
    chunks: int = 0
    latencies_s: list[float] = field(default_factory=list)
    safe_actions: int = 0
    events: list[RunnerEvent] = field(default_factory=list)  # one per safe action
    request_failures: list[RunnerEvent] = field(default_factory=list)
    policy_versions: list[str] = field(default_factory=list)  # distinct, in order of arrival
    request_steps: list[int] = field(default_factory=list)  # the observation step of each request
    overruns: int = 0  # realtime steps that took longer than a control period

    @property
    def policy_version(self) -> str | None:
        return self.policy_versions[0] if self.policy_versions else None


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class _Clock(Protocol):
    def now(self) -> float: ...
    def sleep_until(self, t: float) -> None: ...


class SimClock:
    """Simulated time: sleeping just moves the clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@dataclass
class _Reply:
    chunk: ActionChunk | None
    reason: Reason | None
    detail: str
    elapsed_s: float  # real seconds the call took

    @property
    def latency_s(self) -> float:
        return self.chunk.latency_s if self.chunk is not None else self.elapsed_s


@dataclass
class _InFlight:
    future: Future[_Reply]
    obs_step: int
    sent_at: float  # runner clock
    frame_index: int  # video-rate index of the request's last frame


class ActionChunkRunner:
    """Runs episodes of `robot` under `client` at the robot's control rate (see module doc)."""

    def __init__(
        self,
        client: PolicyClient,
        robot: Robot,
        *,
        control_hz: float | None = None,
        action_dim: int | None = None,
        refill_threshold: int | None = None,
        merge: Merge = "latest",
        decay: float = 1.0,
        safe_action: SafeAction | None = None,
        realtime: bool = False,
        retry_interval_s: float = 0.5,
    ) -> None:
        if merge not in ("latest", "weighted"):
            raise ValueError(f"merge: expected 'latest' or 'weighted', got {merge!r}")
        if decay < 0:
            raise ValueError("decay: must be >= 0")
        self.client = client
        self.robot = robot
        self.control_hz = control_hz
        self.action_dim = action_dim
        self.refill_threshold = refill_threshold
        self.merge = merge
        self.decay = decay
        self.safe_action = safe_action
        self.realtime = realtime
        self.retry_interval_s = retry_interval_s
        self.metadata: PolicyMetadata | None = None

    # Settings that come from the server unless given --------------------------------------------

    def _learn_metadata(self) -> None:
        try:
            self.metadata = self.client.metadata()
        except PolicyError as exc:
            log.debug("policy metadata not available yet: %s", exc)

    def _rate(self) -> float:
        if self.control_hz:
            return self.control_hz
        if self.metadata is not None and self.metadata.action_rate_hz > 0:
            return self.metadata.action_rate_hz
        raise PolicyError("control_hz: the server did not say its action rate; pass control_hz")

    def _threshold(self) -> int:
        if self.refill_threshold is not None:
            return self.refill_threshold
        if self.metadata is not None:
            return max(1, self.metadata.actions_per_chunk // 2)
        return 1

    def _stride(self) -> int:
        meta = self.metadata
        if meta is None or meta.video_frames_per_chunk <= 0:
            return 1
        return max(1, meta.actions_per_chunk // meta.video_frames_per_chunk)

    def _frames_kept(self) -> int:
        """At most two chunks of frames per request: enough to catch up after a failed request."""
        meta = self.metadata
        return 2 * max(1, meta.video_frames_per_chunk) if meta is not None else 1

    def _safe(self, state: NDArray[np.float32]) -> NDArray[np.float32]:
        if callable(self.safe_action):
            return np.asarray(self.safe_action(state), dtype=np.float32)
        if self.safe_action is not None:
            return np.asarray(self.safe_action, dtype=np.float32)
        dim = self.action_dim or (self.metadata.action_dim if self.metadata is not None else None)
        if dim is None:
            raise PolicyError("action_dim: unknown before the first reply; pass action_dim or safe_action")
        return np.zeros(dim, np.float32)

    # The episode --------------------------------------------------------------------------------

    def run_episode(
        self,
        instruction: str,
        session_id: str | None = None,
        max_steps: int = 150,
        done: Callable[[], bool] | None = None,
    ) -> EpisodeRunStats:
        """Runs until `done()` or `max_steps`; the first chunk is awaited before the clock starts."""
        episode = _Episode(self, session_id or uuid.uuid4().hex, instruction)
        try:
            images, state = episode.warm_start()
            for step in range(max_steps):
                if done is not None and done():
                    break
                if step > 0:
                    images, state = self.robot.observe()
                episode.step(step, images, state)
            episode.finish()
        finally:
            episode.close()
        return episode.stats

    # Merging ------------------------------------------------------------------------------------

    def _merge(
        self,
        plan: dict[int, list[tuple[int, NDArray[np.float32]]]],
        actions: NDArray[np.float32],
        obs_step: int,
        next_step: int,
        seq: int,
    ) -> None:
        """Merges a chunk for the observation at `obs_step`; steps before `next_step` are past."""
        fresh: dict[int, list[tuple[int, NDArray[np.float32]]]] = {}
        for i, action in enumerate(actions):
            step = obs_step + i
            if step < next_step:
                continue
            proposals = plan.get(step, []) if self.merge == "weighted" else []
            fresh[step] = [*proposals, (seq, np.asarray(action, dtype=np.float32))]
        # As in LeRobot: the queue becomes the new chunk's steps; older steps it does not cover go.
        plan.clear()
        plan.update(fresh)

    def _pop(
        self, plan: dict[int, list[tuple[int, NDArray[np.float32]]]], step: int
    ) -> NDArray[np.float32] | None:
        for past in [s for s in plan if s < step]:
            del plan[past]
        proposals = plan.pop(step, None)
        if not proposals:
            return None
        if len(proposals) == 1:
            return proposals[0][1]
        newest = max(seq for seq, _ in proposals)
        weights = np.array([math.exp(-self.decay * (newest - seq)) for seq, _ in proposals])
        stacked = np.stack([a for _, a in proposals]).astype(np.float64)
        merged: NDArray[np.float64] = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
        return merged.astype(np.float32)


class _Episode:
    """One episode's moving parts: the plan of future actions, the frames the server may lack,
    the request in flight and the clock; `run_episode` drives it one control step at a time."""

    def __init__(self, runner: ActionChunkRunner, session: str, instruction: str) -> None:
        self.runner = runner
        self.session = session
        self.instruction = instruction
        self.clock: _Clock = RealClock() if runner.realtime else SimClock()
        self.stats = EpisodeRunStats(clock="wall" if runner.realtime else "simulated")
        # step -> [(chunk number, proposed action)]; only steps not yet executed.
        self.plan: dict[int, list[tuple[int, NDArray[np.float32]]]] = {}
        self.video: dict[int, NDArray[np.uint8]] = {}  # video-rate index -> frame the server may lack
        self.acked = -1  # the last frame index a reply confirmed
        self.retry_at = -math.inf
        self.last_failure: RunnerEvent | None = None
        self.chunk_seq = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-request")
        self.inflight: _InFlight | None = None
        self.dt = self.started = self.next_tick = 0.0

    def warm_start(self) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """Resets the session and awaits the first chunk (or the first failure) with the robot at
        rest, then starts the clock; returns the observation the first request was sent with."""
        runner = self.runner
        runner._learn_metadata()
        try:
            runner.client.reset(self.session)
        except PolicyError as exc:
            self.stats.request_failures.append(RunnerEvent(0, _reason(exc), str(exc)))
        images, state = runner.robot.observe()
        first = self._send(0, images, state)
        self._land(first, first.future.result(), 0)
        self.dt = 1.0 / runner._rate()
        self.started = self.next_tick = self.clock.now()
        if self.last_failure is not None:
            self.retry_at = self.started + runner.retry_interval_s
        return images, state

    def step(self, step: int, images: NDArray[np.uint8], state: NDArray[np.float32]) -> None:
        """One control period: take a reply that arrived, ask for more if the plan runs short,
        act, and wait for the next tick."""
        now = self.clock.now()
        self._receive(step, now)
        self._request(step, now, images, state)
        self.runner.robot.act(self._action(step, state))
        self.stats.steps += 1
        self._wait_for_tick()

    def finish(self) -> None:
        self.stats.elapsed_s = self.clock.now() - self.started
        self.stats.target_rate_hz = 1.0 / self.dt

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # Requests -----------------------------------------------------------------------------------

    def _call(self, images: NDArray[np.uint8], state: NDArray[np.float32], index: int) -> _Reply:
        """The request itself, on the executor's thread: every failure becomes a reply with a reason."""
        started = time.perf_counter()
        try:
            chunk = self.runner.client.infer(self.session, self.instruction, images, state, frame_index=index)
            return _Reply(chunk, None, "", time.perf_counter() - started)
        except PolicyTimeout as exc:
            return _Reply(None, "timeout", str(exc), time.perf_counter() - started)
        except PolicyUnavailable as exc:
            return _Reply(None, "unavailable", str(exc), time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a robot holds still rather than crash on any failure
            detail = str(exc) if isinstance(exc, PolicyError) else f"{type(exc).__name__}: {exc}"
            return _Reply(None, "error", detail, time.perf_counter() - started)

    def _send(self, step: int, images: NDArray[np.uint8], state: NDArray[np.float32]) -> _InFlight:
        """Sends the observation at `step` with the frames the server has not confirmed yet."""
        index = step // self.runner._stride()
        self.video[index] = images
        pending = sorted(i for i in self.video if i > self.acked)[-self.runner._frames_kept() :]
        batch = np.stack([self.video[i] for i in pending])  # [T, views, H, W, 3], the current frame last
        self.stats.requests += 1
        self.stats.request_steps.append(step)
        future = self.executor.submit(self._call, batch, state.copy(), index)
        return _InFlight(future, step, self.clock.now(), index)

    def _land(self, flight: _InFlight, reply: _Reply, next_step: int) -> None:
        """Merges a reply's chunk into the plan, or records its failure and when to retry."""
        runner, stats = self.runner, self.stats
        if reply.chunk is None:
            assert reply.reason is not None
            self.last_failure = RunnerEvent(next_step, reply.reason, reply.detail)
            stats.request_failures.append(self.last_failure)
            self.retry_at = flight.sent_at + reply.latency_s + runner.retry_interval_s
            log.warning("session %s step %d: request failed (%s)", self.session, next_step, reply.detail)
            return
        chunk = reply.chunk
        self.last_failure = None
        self.acked = max(self.acked, flight.frame_index)
        for old in [i for i in self.video if i <= self.acked]:
            del self.video[old]
        stats.chunks += 1
        stats.latencies_s.append(chunk.latency_s)
        if chunk.policy_version and chunk.policy_version not in stats.policy_versions:
            stats.policy_versions.append(chunk.policy_version)
        if runner.metadata is None or runner.metadata.policy_version != chunk.policy_version:
            runner._learn_metadata()
        self.chunk_seq += 1
        runner._merge(self.plan, chunk.actions, flight.obs_step, next_step, self.chunk_seq)

    def _arrived(self, flight: _InFlight, now: float, wait: bool) -> _Reply | None:
        if not wait and not flight.future.done():
            return None
        reply = flight.future.result()
        if not self.runner.realtime and flight.sent_at + reply.latency_s > now:
            return None  # simulated: not here yet at this step
        return reply

    # One control step ---------------------------------------------------------------------------

    def _receive(self, step: int, now: float) -> None:
        """Lands the request in flight if its reply is here (on a simulated clock: by now)."""
        if self.inflight is None:
            return
        reply = self._arrived(self.inflight, now, wait=not self.runner.realtime)
        if reply is not None:
            self._land(self.inflight, reply, step)
            self.inflight = None

    def _request(self, step: int, now: float, images: NDArray[np.uint8], state: NDArray[np.float32]) -> None:
        """Keeps the frame if it is on the video lattice, and sends it when the plan runs short,
        nothing is in flight and no retry is pending."""
        runner = self.runner
        on_lattice = step % runner._stride() == 0
        if on_lattice:
            self.video[step // runner._stride()] = images
        queued = sum(1 for s in self.plan if s >= step)
        if self.inflight is None and on_lattice and queued < runner._threshold() and now >= self.retry_at:
            self.inflight = self._send(step, images, state)

    def _action(self, step: int, state: NDArray[np.float32]) -> NDArray[np.float32]:
        """The plan's action for `step`; a safe action, reported with why, when there is none or
        it is not finite."""
        action = self.runner._pop(self.plan, step)
        event = None
        if action is None and self.last_failure is not None:
            event = RunnerEvent(step, self.last_failure.reason, self.last_failure.detail)
        elif action is None:
            event = RunnerEvent(step, "empty_queue", "no action planned for this step")
        elif not np.all(np.isfinite(action)):
            event = RunnerEvent(step, "error", "the policy proposed a non-finite action")
        if event is not None:
            action = self.runner._safe(state)
            self.stats.safe_actions += 1
            self.stats.events.append(event)
        assert action is not None
        return action

    def _wait_for_tick(self) -> None:
        self.next_tick += self.dt
        if self.runner.realtime and self.clock.now() > self.next_tick:
            self.stats.overruns += 1
            self.next_tick = self.clock.now()  # late: do not rush to catch up
        self.clock.sleep_until(self.next_tick)


def _reason(exc: PolicyError) -> Reason:
    if isinstance(exc, PolicyTimeout):
        return "timeout"
    if isinstance(exc, PolicyUnavailable):
        return "unavailable"
    return "error"
