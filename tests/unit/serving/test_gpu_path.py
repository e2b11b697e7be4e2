"""The GPU path's pieces that run on a CPU: the session budget rule (a pure function, fed the
numbers a GPU would report), the compiled step through the engine and the predictor (compiled
at warm-up, equal to eager), and `wamfleet serve`'s GPU options."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.unit.model.test_compile import CountingBackend
from tests.unit.serving.policy_support import tiny_policy
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import load_policy
from wamfleet.model.transformer import CompileSettings
from wamfleet.serving.engine import (
    MIN_HEADROOM,
    InferRequest,
    InferResult,
    PolicyEngine,
    activation_bytes,
    default_session_budget,
    session_budget,
    session_bytes,
)

# Compiles the denoising step with inductor: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

torch.set_num_threads(1)
GIB = 2**30


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_on_a_gpu_sessions_get_the_free_memory_less_a_reserve_for_the_work() -> None:
    # An 80 GiB GPU with 70 GiB free after the weights, 3 GiB of activations for a max batch:
    # reserve = 2 x 3 GiB + 5% of 80 GiB = 10 GiB, so 60 GiB for caches (not just max-batch sessions).
    budget = session_budget(GIB, 8, cuda_free=70 * GIB, cuda_total=80 * GIB, activations=3 * GIB)
    assert budget == 60 * GIB
    # A small GPU: the headroom is at least 1 GiB.
    small = session_budget(GIB // 4, 8, cuda_free=4 * GIB, cuda_total=8 * GIB, activations=GIB // 2)
    assert small == 4 * GIB - GIB - MIN_HEADROOM
    # Nothing left: the budget is positive but holds no session (robots evict each other).
    assert session_budget(GIB, 8, cuda_free=GIB, cuda_total=80 * GIB, activations=GIB) == 1


def test_on_a_cpu_sessions_get_max_batch_sessions_within_a_quarter_of_ram() -> None:
    assert session_budget(GIB, 8, host_ram=64 * GIB) == 8 * GIB
    assert session_budget(GIB, 8, host_ram=16 * GIB) == 4 * GIB


def test_the_cuda_rule_reads_free_memory_after_the_weights(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = WAMConfig.preset_named("wan2.1-1.3b", embodiments=[{"name": "r", "state_dim": 8, "action_dim": 8}])
    asked: list[torch.device] = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return 120 * GIB, 141 * GIB  # an H200 holding the 1.3B model

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    device = torch.device("cuda", 0)
    budget = default_session_budget(cfg, torch.bfloat16, device, 16)
    act = activation_bytes(cfg, torch.bfloat16, 16)
    assert asked == [device]
    assert budget == 120 * GIB - 2 * act - int(141 * GIB * 0.05)
    one = session_bytes(cfg, torch.bfloat16)
    assert 10 < budget // one < 100  # tens of 1.3B sessions, each ~4 GiB at most
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (GIB, 141 * GIB))
    with caplog.at_level(logging.WARNING, logger="wamfleet.serving.engine"):
        assert default_session_budget(cfg, torch.bfloat16, device, 16) == 1
    assert "robots will evict each other" in caplog.text


def test_activation_estimate_grows_with_the_batch_and_fits_the_shapes() -> None:
    wan = WAMConfig.preset_named("wan2.1-1.3b", embodiments=[{"name": "r", "state_dim": 8, "action_dim": 8}])
    one, sixteen = activation_bytes(wan, torch.bfloat16, 1), activation_bytes(wan, torch.bfloat16, 16)
    assert one < sixteen < 16 * one
    assert 0.5 * GIB < sixteen < 8 * GIB
    tiny = WAMConfig.preset_named("tiny", embodiments=[{"name": "r", "state_dim": 8, "action_dim": 8}])
    assert activation_bytes(tiny, torch.float32, 8) < 64 * 2**20


def request(
    session: str, frames: int = 1, frame_index: int | None = None, value: float = 0.0
) -> InferRequest:
    rng = np.random.default_rng(len(session) * 100 + (frame_index or 0))
    images = rng.integers(0, 255, (frames, 2, 96, 96, 3), dtype=np.uint8)
    return InferRequest(
        session, "reach the goal", images, np.full(39, value, np.float32), frame_index=frame_index
    )


def test_the_compiled_engine_compiles_at_warm_up_and_answers_as_the_eager_one(tmp_path: Path) -> None:
    """Warm-up compiles every graph (batch 1, then a symbolic batch); robots at different
    chunks, batched in whatever sizes the worker finds, compile nothing more and get exactly
    the eager engine's chunks."""
    from wamfleet.serving.predictor import WAMPredictor

    backend = CountingBackend()
    directory = tiny_policy(tmp_path / "p")
    predictor = WAMPredictor("wam", str(directory), compile=CompileSettings(backend=backend))
    assert predictor.load() and predictor.ready
    compiled = predictor.engine
    assert isinstance(compiled, PolicyEngine) and compiled.sampler.compile is not None
    assert backend.graphs == 6 and len(compiled.sessions) == 0  # warm-up sessions are forgotten
    eager = PolicyEngine(load_policy(directory), version="v", max_batch=1)
    n = eager.cfg.video_frames_per_chunk
    robots = [f"robot-{'x' * i}" for i in range(1, 6)]
    got: dict[tuple[str, int], InferResult] = {}
    try:
        for chunk in range(3):
            # Robots join one chunk apart, so each batch mixes cache lengths.
            active = robots[: 2 + chunk]
            calls = [
                threading.Thread(
                    target=lambda r=r, c=chunk: got.__setitem__(
                        (r, c), compiled.infer(request(r, n + 1, frame_index=n * c, value=c / 10))
                    )
                )
                for r in active
            ]
            for call in calls:
                call.start()
            for call in calls:
                call.join()
        assert backend.graphs == 6
        assert max(r.timing.batch_size for r in got.values()) > 1
        for robot in robots:
            for chunk in range(3):
                if (robot, chunk) not in got:
                    continue
                alone = eager.infer(request(robot, n + 1, frame_index=n * chunk, value=chunk / 10))
                np.testing.assert_allclose(got[robot, chunk].actions, alone.actions, rtol=0, atol=1e-5)
    finally:
        predictor.stop()
        eager.close()


runner = CliRunner()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_serve_on_cuda_without_a_gpu_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wamfleet.platform.cli.main import app

    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(
        app, ["serve", "--policy", str(tmp_path / "p"), "--device", "cuda", "--dtype", "bf16"]
    )
    assert result.exit_code == 2
    assert "no CUDA device is visible" in result.output


def test_serve_names_a_bad_compile_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wamfleet.platform.cli.main import app

    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(
        app, ["serve", "--policy", str(tmp_path / "p"), "--compile", "--compile-mode", "turbo"]
    )
    assert result.exit_code == 2
    assert "--compile-mode: expected one of" in result.output
    result = runner.invoke(app, ["serve", "--policy", str(tmp_path / "p"), "--compile-mode", "default"])
    assert result.exit_code == 2
    assert "--compile-mode: only with --compile" in result.output


def test_the_gpu_benchmark_imports_without_a_simulator() -> None:
    """A bare GPU machine gets the model's packages carried to it, not MuJoCo or Meta-World: the
    serving benchmark and the Sawyer's embodiment spec must import without them."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['metaworld'] = None; sys.modules['mujoco'] = None;"
        "sys.path.insert(0, 'benchmarks'); import gpu_serving;"
        "from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment;"
        "assert sawyer_embodiment(64).cameras[0].height == 64;"
        "assert 'metaworld' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]"
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_gpu_benchmark_gives_each_preset_its_own_budget() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from gpu_serving import without_presets

    argv = ["--preset", "small", "--budget-s", "30", "--sessions", "1,4", "--preset=wan2.1-1.3b", "--quick"]
    assert without_presets(argv) == ["--sessions", "1,4", "--quick"]
