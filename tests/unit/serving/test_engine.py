from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.unit.serving.policy_support import nan_policy, tiny_policy
from wamfleet.model.policy import load_policy
from wamfleet.serving.engine import (
    CacheWrite,
    InferRequest,
    InferResult,
    PolicyEngine,
    RequestError,
    session_bytes,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    policy = load_policy(tiny_policy(tmp_path_factory.mktemp("policy") / "p"))
    return PolicyEngine(policy, version="test-1")


def request(
    session: str = "s1", frames: int = 1, instruction: str = "reach the goal", **kw: object
) -> InferRequest:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (frames, 2, 96, 96, 3), dtype=np.uint8)
    base = {
        "session_id": session,
        "instruction": instruction,
        "images": images,
        "state": np.zeros(39, np.float32),
    }
    return InferRequest(**(base | kw))  # type: ignore[arg-type]


def test_chunks_advance_within_a_session_and_observe_real_frames(engine: PolicyEngine) -> None:
    first = engine.infer(request("a"))
    assert first.actions.shape == (8, 4)
    assert first.actions.dtype == np.float32
    assert first.chunk_index == 1
    assert first.policy_version == "test-1"
    second = engine.infer(request("a", frames=4))
    assert second.chunk_index == 2
    session = engine.sessions.get(("", "a"))
    assert session is not None
    assert session.grids[0].sampler.chunks_done == 1  # the executed chunk went into the cache
    assert list(session.writes) == [CacheWrite(grid_start=0, chunk=1, frames=(1, 2, 3, 4))]
    assert second.timing.total_ms >= second.timing.denoise_ms > 0


def test_early_requests_keep_real_frames_at_their_real_times(engine: PolicyEngine) -> None:
    """Half a chunk per request (2 of 4 frames): no padding, no time squeeze. Each request is a
    chunk boundary of one of two caches (phases 0 and 2), written only with whole real chunks."""
    for _ in range(5):
        engine.infer(request("early", frames=2))
    session = engine.sessions.get(("", "early"))
    assert session is not None and session.now == 8
    assert sorted(session.grids) == [0, 2]
    assert [g.start for _, g in sorted(session.grids.items())] == [0, 2]
    assert list(session.writes) == [
        CacheWrite(grid_start=0, chunk=1, frames=(1, 2, 3, 4)),
        CacheWrite(grid_start=2, chunk=1, frames=(3, 4, 5, 6)),
        CacheWrite(grid_start=0, chunk=2, frames=(5, 6, 7, 8)),
    ]


def test_frame_index_places_frames_dedupes_resends_and_restarts_after_a_gap(engine: PolicyEngine) -> None:
    engine.infer(request("idx", frame_index=10))
    engine.infer(request("idx", frames=4, frame_index=14))
    engine.infer(request("idx", frames=4, frame_index=14))  # a resend: nothing new is written
    session = engine.sessions.get(("", "idx"))
    assert session is not None
    assert list(session.writes) == [CacheWrite(grid_start=10, chunk=1, frames=(11, 12, 13, 14))]
    engine.infer(request("idx", frames=2, frame_index=20))  # frames 15..18 never arrived
    assert session.grids[20 % 4].start == 20 and session.grids[20 % 4].sampler.chunks_done == 0
    assert len(session.writes) == 1  # nothing was padded over the gap
    with pytest.raises(RequestError, match="frame_index: 19 is before"):
        engine.infer(request("idx", frame_index=19))
    with pytest.raises(RequestError, match="frame_index: expected a non-negative integer"):
        engine.infer(request("idx", frame_index="20"))


def test_reset_and_new_instruction_start_over(engine: PolicyEngine) -> None:
    engine.infer(request("b"))
    engine.infer(request("b"))
    assert engine.infer(request("b", reset=True)).chunk_index == 1
    engine.infer(request("b"))
    assert engine.infer(request("b", instruction="push the puck")).chunk_index == 1


def test_unknown_or_evicted_session_is_rebuilt_not_an_error(engine: PolicyEngine) -> None:
    engine.infer(request("c"))
    engine.sessions.drop(("", "c"))
    assert engine.infer(request("c", frames=4)).chunk_index == 1


def test_memory_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", max_session_bytes=1)
    for sid in ("x", "y", "z"):
        engine.infer(request(sid))
    assert len(engine.sessions) == 1 and engine.sessions.get(("", "z")) is not None
    assert engine.sessions.evictions == 2


def test_default_budget_fits_max_batch_sessions_of_this_preset(tmp_path: Path) -> None:
    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", max_batch=3)
    one = session_bytes(engine.cfg, torch.float32)
    assert engine.sessions.max_bytes == 3 * one
    for _ in range(3):  # a session at its largest (two phases, full caches) stays within its size
        for _ in range(engine.cfg.cache_chunks * 2):
            engine.infer(request("full", frames=2))
    session = engine.sessions.get(("", "full"))
    assert session is not None and len(session.grids) == 2
    frames = sum(f.nbytes for f in session.frames.values())
    assert session.nbytes() - frames <= one


def test_ttl_expires_idle_sessions(tmp_path: Path) -> None:
    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", session_ttl_s=0.0)
    engine.infer(request("old"))
    assert engine.sessions.get(("", "old")) is None


def test_cache_restarts_from_the_latest_frame_at_the_trained_context(tmp_path: Path) -> None:
    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v")
    limit = engine.cfg.cache_chunks
    assert limit == engine.cfg.context_chunks == 4
    for _ in range(limit + 2):
        engine.infer(request("long", frames=4))
    session = engine.sessions.get(("", "long"))
    assert session is not None
    grid = session.grids[0]
    # Chunk `limit` is predicted from limit-1 cached chunks; after observing it the cache holds
    # the whole trained context, so the next request starts again from its own frame.
    assert [w.chunk for w in session.writes] == [*range(1, limit + 1), 1]
    assert grid.start == 4 * (limit + 1) - 4 + 0 and grid.sampler.chunks_done == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": np.zeros((2, 96, 96, 3), np.float32)}, "images: expected dtype uint8"),
        ({"images": np.zeros((3, 96, 96, 3), np.uint8)}, "images: expected"),
        ({"images": np.zeros((1, 2, 4, 96, 3), np.uint8)}, "images: height and width"),
        ({"images": np.zeros((65, 2, 16, 16, 3), np.uint8)}, "images: between 1 and 64 frames"),
        ({"state": np.zeros(5)}, "state: expected 39 values"),
        ({"state": np.full(39, np.nan)}, "state: contains NaN"),
        ({"state": "abc"}, "state: expected a numeric array"),
        ({"state": np.array(["1.5"] * 39)}, "state: expected a numeric array, got dtype <U3"),
        ({"state": np.zeros(39, "datetime64[s]")}, "state: expected a numeric array, got dtype datetime64"),
        ({"state": np.ones(39, bool)}, "state: expected integers or floats, got dtype bool"),
        ({"state": np.full(39, 1e30)}, "state: values must be within +-1e+06, got 1e+30 at index 0"),
        ({"state": [0.0] * 38 + [-2e6]}, "state: values must be within +-1e+06, got -2e+06 at index 38"),
        ({"state": np.full(39, 1e300)}, "state: values must be within"),
        ({"state": [[0.0] * 3, [1.0]]}, "state: expected a rectangular numeric array"),
        ({"images": [[[1, 2], [3]]]}, "images: expected a rectangular numeric array"),
        ({"images": np.zeros((0, 2, 16, 16, 3), np.uint8)}, "images: between 1 and 64 frames"),
        ({"images": np.zeros((2, 16, 16, 3), ">u2")}, "images: expected dtype uint8, got >u2"),
        ({"owner": "x" * 500}, "session_token: must be a string of at most 128"),
        ({"instruction": ""}, "instruction: must be a non-empty string"),
        ({"session_id": ""}, "session_id"),
    ],
)
def test_bad_input_names_the_input(engine: PolicyEngine, change: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=re.escape(message)):
        engine.infer(request("bad", **change))  # type: ignore[arg-type]
    assert engine.infer(request("good")).actions.shape == (8, 4)  # and the engine still serves


def test_metadata_describes_the_robot(engine: PolicyEngine) -> None:
    meta = engine.metadata()
    assert (meta.state_dim, meta.action_dim, meta.actions_per_chunk) == (39, 4, 8)
    assert meta.cameras == ["exterior", "wrist"]


def test_concurrent_sessions_are_batched_and_each_caller_gets_its_own_result(tmp_path: Path) -> None:
    import threading

    policy = load_policy(tiny_policy(tmp_path / "p"))
    batched = PolicyEngine(policy, version="v", max_batch=8)
    single = PolicyEngine(policy, version="v", max_batch=1)
    results: dict[str, InferResult] = {}

    def call(sid: str) -> None:
        results[sid] = batched.infer(request(sid, state=np.full(39, float(len(sid)), np.float32)))

    try:
        threads = [threading.Thread(target=call, args=(f"robot-{'x' * i}",)) for i in range(1, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sizes = [r.timing.batch_size for r in results.values()]
        assert max(sizes) > 1  # they really were denoised together
        for sid, result in results.items():
            alone = single.infer(request(sid, state=np.full(39, float(len(sid)), np.float32)))
            assert result.session_id == sid
            np.testing.assert_allclose(result.actions, alone.actions, atol=1e-4)
    finally:
        batched.close()


def test_a_client_sending_one_frame_per_request_keeps_at_most_two_caches(engine: PolicyEngine) -> None:
    for _ in range(9):
        engine.infer(request("single"))
    session = engine.sessions.get(("", "single"))
    assert session is not None and len(session.grids) == 2
    assert list(session.writes) == []  # no chunk of real video ever arrived: nothing to write


def test_non_finite_actions_are_an_error_and_the_server_still_comes_up(tmp_path: Path) -> None:
    """A NaN action head: never a NaN to the robot, and the predictor still loads (its warm-up
    used to fail on it, so a rollout of such a version could never reach its guardrails)."""
    from wamfleet.serving.engine import NonFiniteActions
    from wamfleet.serving.predictor import WAMPredictor

    broken = nan_policy(tmp_path)
    engine = PolicyEngine(load_policy(broken), version="v")
    try:
        with pytest.raises(NonFiniteActions, match="non-finite actions"):
            engine.infer(request("nan"))
    finally:
        engine.close()
    predictor = WAMPredictor("wam", str(broken))
    try:
        assert predictor.load() and predictor.ready
    finally:
        predictor.stop()


@pytest.mark.parametrize(
    "state",
    [
        np.zeros(39, ">f4"),  # big-endian
        np.zeros(39, ">i8"),
        np.zeros(39, np.float16),
        np.full(39, 7, np.uint16),
        [0] * 39,  # a plain list of ints, as msgpack decodes it
        np.full(39, 1e6),  # the bound itself
    ],
)
def test_numeric_state_of_any_width_or_byte_order_is_accepted(engine: PolicyEngine, state: object) -> None:
    assert engine.infer(request("numeric", state=state)).actions.shape == (8, 4)


def test_a_huge_finite_state_is_refused_before_it_can_make_nan_actions(engine: PolicyEngine) -> None:
    """1e30 passed validation and the policy answered NaN actions (a 500 or a NaN reply)."""
    with pytest.raises(RequestError, match=r"state: values must be within \+-1e\+06"):
        engine.submit(request("huge", state=np.full(39, 1e30, np.float32)))


def test_sessions_belong_to_their_owner(engine: PolicyEngine) -> None:
    """Two owners, one session id: neither can reset or write into the other's session."""
    assert engine.infer(request("robot", owner="alice")).chunk_index == 1
    assert engine.infer(request("robot", frames=4, owner="alice")).chunk_index == 2
    engine.reset("robot", owner="mallory")
    assert engine.infer(request("robot", frames=4, owner="mallory", frame_index=40)).chunk_index == 1
    mine = engine.sessions.get(("alice", "robot"))
    assert mine is not None and mine.now == 4 and mine.chunk_index == 2  # mallory's frames went elsewhere
    assert engine.infer(request("robot", frames=4, owner="alice")).chunk_index == 3
    engine.reset("robot", owner="alice")
    assert engine.sessions.get(("alice", "robot")) is None
    assert engine.sessions.get(("mallory", "robot")) is not None


def test_continuous_batching_never_waits_and_keeps_each_sessions_order(tmp_path: Path) -> None:
    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", max_batch=8)
    try:
        alone = engine.infer(request("solo"))
        # An idle worker runs a lone request at once (it used to wait max_wait for company).
        assert alone.timing.queue_ms < 50 and alone.timing.batch_size == 1
        futures = [engine.submit(request(sid, frames=4)) for sid in ("a", "b", "a", "a", "b")]
        results = [f.result() for f in futures]
    finally:
        engine.close()
    by_session: dict[str, list[int]] = {}
    for r in results:
        by_session.setdefault(r.session_id, []).append(r.chunk_index)
    assert by_session == {"a": [1, 2, 3], "b": [1, 2]}  # in order, one chunk per batch per session
    assert max(r.timing.batch_size for r in results) <= 2  # never two of one session together


def test_every_answered_request_is_counted_once_after_its_reply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker writes metrics and the request log once it idles (or before its next batch), so
    the bookkeeping never holds the GIL between a chunk and its robot; nothing is lost or doubled,
    and warm-up requests are not counted."""
    from prometheus_client import REGISTRY

    def counted() -> tuple[float, float]:
        chunks = REGISTRY.get_sample_value("wamfleet_policy_chunks_total") or 0.0
        batches = REGISTRY.get_sample_value("wamfleet_policy_batch_size_count") or 0.0
        return chunks, batches

    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", max_batch=8)
    try:
        engine.warm_up()
        before = counted()
        with caplog.at_level("INFO", logger="wamfleet.serving.engine"):
            for future in [engine.submit(request(sid, frames=4)) for sid in ("a", "b", "a")]:
                future.result()
            engine.infer(request("c"))
            deadline = time.monotonic() + 5
            while counted()[0] - before[0] < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)  # long past the idle flush: a second count would show now
            after = counted()
    finally:
        engine.close()
    assert (after[0] - before[0], after[1] - before[1]) == (4, 4)
    logged = [r.getMessage() for r in caplog.records if "total_ms=" in r.getMessage()]
    assert sorted(line.split()[0] for line in logged) == ["session=a", "session=a", "session=b", "session=c"]


def test_requests_arriving_while_a_batch_encodes_join_it_before_it_denoises(tmp_path: Path) -> None:
    """Iteration-level joining at the encode/denoise boundary: robots that ask a moment after
    the first share its denoising instead of waiting a whole chunk (no worker ever waits for
    company). A second request of a session already in the batch waits for the next one, and a
    task queued meanwhile runs between batches, never inside one."""
    from wamfleet.serving.engine import _Task

    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", max_batch=8)
    prepare = engine._prepare
    encoding, others_queued = threading.Event(), threading.Event()

    def slow_prepare(pending: Any) -> Any:
        if pending.request.session_id == "first" and not encoding.is_set():
            encoding.set()
            assert others_queued.wait(10)
        return prepare(pending)

    engine._prepare = slow_prepare  # type: ignore[method-assign]
    lock_held_by_task: list[bool] = []
    try:
        first = engine.submit(request("first"))
        assert encoding.wait(10)
        joiners = [engine.submit(request(sid)) for sid in ("b", "c")]
        again = engine.submit(request("first", frames=4))
        task = _Task(lambda: lock_held_by_task.append(engine._lock.locked()))
        engine._queue.put(task)
        others_queued.set()
        results = [f.result(timeout=30) for f in (first, *joiners, again)]
        task.future.result(timeout=30)
    finally:
        engine.close()
    assert [r.timing.batch_size for r in results[:3]] == [3, 3, 3]
    assert (results[3].chunk_index, results[3].timing.batch_size) == (2, 1)
    assert lock_held_by_task == [False]
