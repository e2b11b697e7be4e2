"""The robot's chunk runner and the serving engine together: what reaches the KV cache.

The runner asks for the next chunk with about half a chunk left (as LeRobot's async inference
does). Every frame written into a cache must be a real frame, at the video rate, at the
position of the time that really elapsed: no padding, no squeezed history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import Tensor

from tests.unit.serving.policy_support import tiny_policy
from wamfleet.fleet_agent.chunk_runner import ActionChunkRunner
from wamfleet.model.policy import load_policy
from wamfleet.pipelines.engine_client import EnginePolicyClient
from wamfleet.serving.engine import PolicyEngine

torch.set_num_threads(1)


class StepRobot:
    """Every pixel of its frames holds the control step it was seen at."""

    def __init__(self) -> None:
        self.step = 0

    def observe(self) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        return np.full((2, 32, 32, 3), self.step, np.uint8), np.zeros(39, np.float32)

    def act(self, action: NDArray[np.float32]) -> None:
        assert np.all(np.isfinite(action))
        self.step += 1


# Asked with half a chunk left (4 of 8 actions), or when the chunk is done (DreamZero's pace).
@pytest.mark.parametrize("threshold", [5, None])
def test_the_cache_holds_real_frames_at_the_time_they_were_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: int | None
) -> None:
    engine = PolicyEngine(load_policy(tiny_policy(tmp_path / "p")), version="v", max_batch=1)
    encoded: list[tuple[int, list[int]]] = []
    original = engine.policy.codec.encode_chunk

    def spy(prev: Tensor, chunk: Tensor) -> Tensor:  # records which frames reach the cache
        encoded.append((int(prev[0, 0, 0, 0, 0]), [int(f[0, 0, 0, 0]) for f in chunk[0]]))
        return original(prev, chunk)

    monkeypatch.setattr(engine.policy.codec, "encode_chunk", spy)
    try:
        # The simulated clock lands a reply after its measured latency; a 100 s control period
        # keeps every reply within one step however loaded the box is, so the schedule is fixed.
        runner = ActionChunkRunner(
            EnginePolicyClient(engine), StepRobot(), refill_threshold=threshold or 1, control_hz=0.01
        )
        stats = runner.run_episode("reach the goal", "robot-1", max_steps=60)
    finally:
        engine.close()
    session = engine.sessions.get(("", "robot-1"))
    assert session is not None
    stride = engine.cfg.action_stride  # 2 control steps per video frame
    frames = engine.cfg.video_frames_per_chunk  # 4 video frames per chunk
    assert stats.requests >= 7
    assert encoded, "no executed chunk reached the cache"
    for prev, chunk in encoded:
        # Real frames, one per video period, right after the frame the chunk started from.
        assert chunk == [prev + stride * (i + 1) for i in range(frames)], (prev, chunk)
    for write in session.writes:
        # The chunk sits where the time says: chunk k of a cache starting at frame s holds
        # frames s + (k - 1) * F + 1 ... s + k * F.
        first = write.grid_start + (write.chunk - 1) * frames + 1
        assert write.frames == tuple(range(first, first + frames))
    # The engine saw exactly the frames of the steps the robot was at when it asked.
    request_frames = {step // stride for step in stats.request_steps}
    assert all(step % stride == 0 for step in stats.request_steps)
    phases = {write.grid_start % frames for write in session.writes}
    if threshold is None:
        assert phases == {0}  # one chunk per request: a single cache, on the chunk grid
    else:
        assert len(phases) == 2  # asked with half a chunk left: two phases of the chunk grid
    assert session.now == max(request_frames)
