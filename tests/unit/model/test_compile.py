"""The compiled denoising step (torch.compile of the blocks' per-token segments) on CPU: it
equals the eager step, compiles a bounded number of graphs whatever the sessions' cache
lengths and the batch size, and batches sessions without copying their caches."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from tests.unit.model.wam_support import masks, synthetic_batch, tiny_model
from wamfleet.model.sampler import ChunkPrediction, ChunkSampler, Session
from wamfleet.model.transformer import CompileSettings, WorldActionModel

# Compiles the denoising step with inductor: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Compiled code is cached per function: each test counts its own compilations."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is and counts captures."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


def sessions_at(
    sampler: ChunkSampler, histories: tuple[int, ...]
) -> tuple[list[Session], list[torch.Tensor]]:
    """One single-sample guided session per entry, each with that many chunks in its cache."""
    cfg = sampler.cfg
    fc = cfg.latent_frames_per_chunk
    sessions, states = [], []
    for i, history in enumerate(histories):
        batch = synthetic_batch(cfg, batch=1, chunks=3, seed=i)
        session = sampler.start(
            batch.cond, batch.text, batch.text_mask, torch.zeros_like(batch.text), batch.text_mask
        )
        for c in range(history):
            sampler.observe(session, batch.video[:, :, c * fc : (c + 1) * fc])
        sessions.append(session)
        states.append(batch.states[:, history])
    return sessions, states


def predictions(model: WorldActionModel, settings: CompileSettings | None) -> list[ChunkPrediction]:
    """Each session alone, then batches of 2 and 3 sessions at different cache lengths."""
    cfg = model.config
    sampler = ChunkSampler(model, compile=settings)
    sessions, states = sessions_at(sampler, (0, 2, 1))
    am, sm = masks(cfg, "sawyer", 1)
    out = [
        sampler.predict(s, st, sm, am, ["sawyer"], torch.Generator().manual_seed(i))
        for i, (s, st) in enumerate(zip(sessions, states, strict=True))
    ]
    for n in (2, 3):
        out.append(
            sampler.predict_batch(
                sessions[:n],
                torch.cat(states[:n]),
                sm.expand(n, -1),
                am.expand(n, -1),
                ["sawyer"] * n,
                [torch.Generator().manual_seed(i) for i in range(n)],
            )
        )
    return out


def test_compiled_step_equals_eager_and_never_recompiles_for_a_cache_length() -> None:
    model = tiny_model(cfg_scale=2.0)
    eager = predictions(model, None)
    backend = CountingBackend()
    compiled = predictions(model, CompileSettings(backend=backend))
    for e, c in zip(eager, compiled, strict=True):
        assert torch.equal(c.actions, e.actions) and torch.equal(c.video, e.video)
    # Three segments, each captured for batch 1 and once more with the batch size symbolic:
    # not per block, per cache length or per batch size.
    assert backend.graphs == 6
    again = predictions(model, CompileSettings(backend=backend))  # other sessions, same lengths
    assert all(torch.equal(a.actions, c.actions) for a, c in zip(again, compiled, strict=True))
    sampler = ChunkSampler(model, compile=CompileSettings(backend=backend))
    sessions, states = sessions_at(sampler, (1, 0, 2, 2, 1))  # a batch of 5 at other lengths
    am, sm = masks(model.config, "sawyer", 5)
    sampler.predict_batch(sessions, torch.cat(states), sm, am, ["sawyer"] * 5, [None] * 5)
    assert backend.graphs == 6


def test_batched_compiled_step_reads_each_sessions_cache_in_place() -> None:
    """Sessions with different cache lengths are denoised together without copying a cache:
    every buffer keeps its address, no prediction is committed, and each result is its own."""
    model = tiny_model(cfg_scale=2.0)
    cfg = model.config
    sampler = ChunkSampler(model, compile=CompileSettings(backend="aot_eager"))
    sessions, states = sessions_at(sampler, (2, 0, 1))
    assert len({s.cache.length for s in sessions}) == 3
    buffers = [s.cache.keys + s.cache.values for s in sessions] + [
        s.null_cache.keys + s.null_cache.values for s in sessions if s.null_cache is not None
    ]
    pointers = [[t.data_ptr() for t in group] for group in buffers]
    lengths = [s.cache.length for s in sessions]
    am, sm = masks(cfg, "sawyer", 1)
    together = sampler.predict_batch(
        sessions,
        torch.cat(states),
        sm.expand(3, -1),
        am.expand(3, -1),
        ["sawyer"] * 3,
        [torch.Generator().manual_seed(i) for i in range(3)],
    )
    assert [[t.data_ptr() for t in group] for group in buffers] == pointers
    assert [s.cache.length for s in sessions] == lengths
    for i, (session, state) in enumerate(zip(sessions, states, strict=True)):
        alone = sampler.predict(session, state, sm, am, ["sawyer"], torch.Generator().manual_seed(i))
        assert (together.actions[i] - alone.actions[0]).abs().max() <= 1e-5
        assert (together.video[i] - alone.video[0]).abs().max() <= 1e-5


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler"
)
def test_inductor_kernels_match_the_eager_step_on_cpu() -> None:
    """Real generated kernels (the CPU's default mode), one session over chunks of growing
    cache: equal to eager to float rounding. About 30 s with an empty inductor cache."""
    model = tiny_model(cfg_scale=2.0)
    cfg = model.config
    fc = cfg.latent_frames_per_chunk
    am, sm = masks(cfg, "sawyer", 1)
    batch = synthetic_batch(cfg, batch=1, chunks=3)
    runs = []
    for settings in (None, CompileSettings.for_device("cpu")):
        sampler = ChunkSampler(model, compile=settings)
        session = sampler.start(
            batch.cond, batch.text, batch.text_mask, torch.zeros_like(batch.text), batch.text_mask
        )
        actions = []
        for c in range(3):
            pred = sampler.predict(
                session, batch.states[:, c], sm, am, ["sawyer"], torch.Generator().manual_seed(c)
            )
            actions.append(pred.actions)
            sampler.observe(session, batch.video[:, :, c * fc : (c + 1) * fc])
        runs.append(torch.stack(actions))
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-5)


def test_recommended_settings_use_cuda_graphs_only_on_a_gpu() -> None:
    gpu, cpu = CompileSettings.for_device("cuda"), CompileSettings.for_device("cpu")
    assert gpu.mode == "reduce-overhead" and gpu.cuda_graphs
    assert cpu.mode == "default" and not cpu.cuda_graphs
    assert not CompileSettings(backend="aot_eager", mode="reduce-overhead").cuda_graphs
    assert not CompileSettings(mode="max-autotune-no-cudagraphs").cuda_graphs
