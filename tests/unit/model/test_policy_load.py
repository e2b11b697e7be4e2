"""load_policy(dtype=...) casts the transformer and the VAE, and keeps what must stay float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.serving.policy_support import tiny_policy
from wamfleet.model.policy import load_policy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "p")


def test_a_bf16_policy_casts_the_transformer_and_the_vae_only(policy_dir: Path) -> None:
    policy = load_policy(policy_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.codec.vae.parameters()} == {torch.bfloat16}
    assert policy.codec.latents_mean.dtype == policy.codec.latents_std.dtype == torch.float32
    assert {p.dtype for p in policy.text.model.parameters()} == {torch.float32}
    assert not policy.model.training and not policy.codec.training


def test_a_bf16_codec_encodes_close_to_the_fp32_one(policy_dir: Path) -> None:
    fp32, bf16 = load_policy(policy_dir), load_policy(policy_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in fp32.codec.vae.parameters()} == {torch.float32}
    cfg = fp32.config
    h, w = cfg.view_size
    frames = torch.randint(
        0, 256, (1, 5, len(cfg.cameras), h, w, 3), generator=torch.Generator().manual_seed(0)
    )
    frames = frames.to(torch.uint8)
    expected, got = fp32.codec.encode(frames), bf16.codec.encode(frames)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)
