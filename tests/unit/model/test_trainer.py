from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from tests.unit.model.wam_support import synthetic_batch, tiny_model
from wamfleet.model.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    batch = synthetic_batch(tiny_model().config, batch=2, chunks=2)
    first = Trainer(tiny_model(seed=1), TrainerConfig(lr=1e-3, seed=7), device="cpu")
    for _ in range(3):
        first.step([batch])
    first.save_state(tmp_path / "state.pt")
    expected = [first.step([batch]).loss for _ in range(2)]

    resumed = Trainer(tiny_model(seed=99), TrainerConfig(lr=1e-3, seed=0), device="cpu")
    resumed.load_state(tmp_path / "state.pt")
    assert resumed.step_count == 3
    assert [resumed.step([batch]).loss for _ in range(2)] == expected


def test_grad_accumulation_needs_its_micro_batches_and_warmup_scales_lr() -> None:
    model = tiny_model()
    batch = synthetic_batch(model.config, batch=1, chunks=1)
    trainer = Trainer(model, TrainerConfig(lr=1e-3, grad_accum=2, warmup_steps=4), device="cpu")
    with pytest.raises(ValueError, match="expected 2 micro-batches"):
        trainer.step([batch])
    metrics = trainer.step([batch, batch])
    assert metrics.step == 1
    assert metrics.lr == pytest.approx(1e-3 * 2 / 4)
    assert list(m.step for m in trainer.fit(iter([batch] * 10), steps=3)) == [2, 3]


def test_frozen_model_is_refused() -> None:
    model = tiny_model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(model, device="cpu")


def test_cosine_schedule_warms_up_then_decays_to_its_floor() -> None:
    config = TrainerConfig(lr=1e-3, warmup_steps=2, schedule="cosine", decay_steps=10, min_lr_ratio=0.1)
    trainer = Trainer(tiny_model(), config, device="cpu")
    rates = []
    for step in range(12):
        trainer.step_count = step
        rates.append(trainer._lr())
    assert rates[:3] == pytest.approx([5e-4, 1e-3, 1e-3])  # warmup, then the peak
    assert all(a > b for a, b in itertools.pairwise(rates[2:11]))  # decays every step
    assert rates[10] == pytest.approx(1e-4) and rates[11] == pytest.approx(1e-4)  # floor held
    constant = Trainer(tiny_model(), TrainerConfig(lr=1e-3, warmup_steps=2), device="cpu")
    constant.step_count = 9
    assert constant._lr() == pytest.approx(1e-3)
