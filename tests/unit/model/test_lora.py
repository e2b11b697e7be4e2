"""LoRA trains only adapters and heads, merges exactly, and refuses a base it was not trained on."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from tests.unit.model.test_checkpoint import batch, loss, model
from wamfleet.model.checkpoint import load_checkpoint, save_checkpoint
from wamfleet.model.lora import apply_lora, load_lora, merge_lora, save_lora
from wamfleet.model.objective import WAMBatch, flow_matching_loss
from wamfleet.model.transformer import WorldActionModel

torch.set_num_threads(1)

ADAPTED = re.compile(
    r"blocks\.\d\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.(0\.proj|2))\.lora_[AB]\.default\.weight"
)
HEADS = re.compile(r"action_pos|(action_encoders|state_encoders|action_decoders)\.sawyer\..*")


def train(m: WorldActionModel, b: WAMBatch, steps: int = 2) -> None:
    """A few Adam steps, so the adapters (B starts at zero) actually change the model."""
    optimizer = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        flow_matching_loss(m, b, torch.Generator().manual_seed(step)).loss.backward()
        optimizer.step()


def adapted(seed: int = 0) -> WorldActionModel:
    m = apply_lora(model(seed), rank=4)
    train(m, batch())
    return m


def test_only_adapters_and_heads_train() -> None:
    m = apply_lora(model(), rank=4)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(ADAPTED.fullmatch(n) or HEADS.fullmatch(n) for n in trainable), trainable
    # 2 blocks x (2 attentions x 4 linears + 2 FFN linears) x (A, B)
    assert sum(bool(ADAPTED.fullmatch(n)) for n in trainable) == 2 * 10 * 2
    assert {n for n in trainable if HEADS.fullmatch(n)} == {
        n for n, _ in model().named_parameters() if HEADS.fullmatch(n)
    }

    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, batch(), steps=1)
    changed = {n for n, p in m.named_parameters() if not torch.equal(before[n], p)}
    assert changed <= trainable
    assert any(".lora_B." in n for n in changed)
    assert any(HEADS.fullmatch(n) for n in changed)


def test_merge_reproduces_the_adapted_model_under_plain_names() -> None:
    m, b = adapted(), batch()
    assert all(p.abs().sum() > 0 for n, p in m.named_parameters() if ".lora_B." in n)
    expected = loss(m, b)
    merged = merge_lora(m)
    torch.testing.assert_close(loss(merged, b), expected, rtol=0, atol=1e-5)
    assert {n for n, _ in merged.named_parameters()} == {n for n, _ in model().named_parameters()}
    assert not hasattr(merged, "peft_config")


def test_save_load_lora_round_trip_gives_identical_loss(tmp_path: Path) -> None:
    m, b = adapted(), batch()
    save_lora(tmp_path / "lora", m, base_sha256="a" * 64)
    restored = load_lora(tmp_path / "lora", model(), base_sha256="a" * 64)
    assert torch.equal(loss(restored, b), loss(m, b))


def test_load_lora_onto_another_base_raises(tmp_path: Path) -> None:
    save_lora(tmp_path / "lora", adapted(), base_sha256="a" * 64)
    with pytest.raises(ValueError, match="base checkpoint"):
        load_lora(tmp_path / "lora", model(), base_sha256="b" * 64)


def test_load_lora_adds_heads_of_new_embodiments(tmp_path: Path) -> None:
    m = model()
    m.add_embodiment("arm6", state_dim=7, action_dim=6)
    apply_lora(m)
    save_lora(tmp_path / "lora", m, base_sha256="a" * 64)
    restored = load_lora(tmp_path / "lora", model(), base_sha256="a" * 64)
    assert [e.name for e in restored.config.embodiments] == ["sawyer", "arm6"]
    key = "action_decoders.arm6.weight"
    assert torch.equal(restored.state_dict()[key], m.state_dict()[key])


def test_checkpoint_of_a_lora_model_stores_merged_plain_weights(tmp_path: Path) -> None:
    m, b = adapted(), batch()
    save_checkpoint(tmp_path / "ckpt", m)
    loaded = load_checkpoint(tmp_path / "ckpt").model
    merged = merge_lora(copy.deepcopy(m))
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss(loaded, b), loss(m, b), rtol=0, atol=1e-5)
    assert any(".lora_" in n for n, _ in m.named_parameters())  # saving did not merge `m` itself
