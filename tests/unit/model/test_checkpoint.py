"""Checkpoints round-trip bit-exactly and fail loudly; Wan weights load and compute what Wan computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from tests.unit.model.wam_support import synthetic_batch
from wamfleet.model.checkpoint import (
    NEW_PARAMETER_PREFIXES,
    LoadedCheckpoint,
    load_checkpoint,
    load_wan_transformer,
    save_checkpoint,
)
from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch, flow_matching_loss
from wamfleet.model.transformer import Kind, WorldActionModel

torch.set_num_threads(1)

WAN_TINY = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 384,
    "freq_dim": 256,
    "ffn_dim": 128,
    "num_layers": 2,
    "cross_attn_norm": True,
}


def config() -> WAMConfig:
    return WAMConfig.preset_named("tiny", embodiments=[{"name": "sawyer", "state_dim": 39, "action_dim": 4}])


def model(seed: int = 0) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(config()).eval()


def batch() -> WAMBatch:
    return synthetic_batch(config(), batch=2, chunks=2)


def loss(m: WorldActionModel, b: WAMBatch) -> torch.Tensor:
    with torch.no_grad():
        return flow_matching_loss(m, b, torch.Generator().manual_seed(7)).loss


def test_save_load_gives_identical_loss_bits(tmp_path: Path) -> None:
    m, b = model(), batch()
    stats = {"sawyer": {"spec": {"action_dim": 4}, "action": {"q01": [-1.0] * 4, "q99": [1.0] * 4}}}
    sha = save_checkpoint(tmp_path / "ckpt", m, embodiments=stats, metadata={"run": "r1", "step": 3})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.sha256 == sha
    assert loaded.embodiments == stats
    assert loaded.metadata == {"run": "r1", "step": 3}
    assert loaded.config == m.config
    assert not loaded.model.training
    assert torch.equal(loss(m, b), loss(loaded.model, b))
    manifest = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert manifest["num_parameters"] == m.num_parameters()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "checkpoint.json",
        "config.json",
        "embodiments.json",
        "model.safetensors",
    ]


def test_save_replaces_an_existing_checkpoint_and_leaves_no_temporaries(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", model(0))
    sha = save_checkpoint(tmp_path / "ckpt", model(1))
    assert load_checkpoint(tmp_path / "ckpt").sha256 == sha
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_tampered_weights_raise_naming_the_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", model())
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_or_invalid_config_raises_naming_the_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", model())
    config_file = tmp_path / "ckpt" / "config.json"
    data = json.loads(config_file.read_text())
    config_file.unlink()
    with pytest.raises(ValueError, match=r"config\.json: missing"):
        load_checkpoint(tmp_path / "ckpt")
    config_file.write_text(json.dumps(data | {"num_heads": 5}))
    with pytest.raises(ValueError, match=r"config\.json: not a valid model config"):
        load_checkpoint(tmp_path / "ckpt")


# Wan ------------------------------------------------------------------------------------------


def wan(**overrides: object) -> Any:
    """A tiny Wan with every parameter random (norm weights too, so they are really tested).

    Typed Any: mypy does not see diffusers' models as nn.Modules.
    """
    torch.manual_seed(1)
    w: Any = WanTransformer3DModel(**(WAN_TINY | overrides))
    w.eval()
    with torch.no_grad():
        for p in w.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return w


def test_wan_weights_load_and_compute_what_wan_computes(tmp_path: Path) -> None:
    source = wan()
    source.save_pretrained(tmp_path / "wan")
    m = model()
    report = load_wan_transformer(m, tmp_path / "wan")

    assert report.skipped == []
    assert report.sliced == {}
    assert report.new and all(n.startswith(NEW_PARAMETER_PREFIXES) for n in report.new)
    ours = dict(m.named_parameters())
    for name, tensor in source.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    assert set(report.loaded) == set(source.state_dict())

    g = torch.Generator().manual_seed(3)
    latents, text = torch.randn(1, 4, 3, 8, 16, generator=g), torch.randn(1, 10, 384, generator=g)
    with torch.no_grad():
        expected = source(
            hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=text
        ).sample
        tokens, meta = m.video_tokens(latents, 0, Kind.COND, 0)
        text_kv, mask = m.text_context(text, None)
        hidden = m.run(tokens, torch.full((1, tokens.shape[1]), 500.0), meta, text_kv, mask)
        got = m.unpatchify(hidden, 3)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_sharded_wan_weights_load(tmp_path: Path) -> None:
    source = wan()
    source.save_pretrained(tmp_path / "wan", max_shard_size="200KB")
    assert (tmp_path / "wan" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    m = model()
    report = load_wan_transformer(m, tmp_path / "wan")
    assert set(report.loaded) == set(source.state_dict())
    ours = m.state_dict()
    assert all(torch.equal(ours[name], tensor) for name, tensor in source.state_dict().items())


def test_i2v_wan_keeps_the_noisy_latent_channels_and_skips_image_conditioning(tmp_path: Path) -> None:
    wan(in_channels=12, image_dim=32, added_kv_proj_dim=64).save_pretrained(tmp_path / "wan")
    source = load_file(str(tmp_path / "wan" / "diffusion_pytorch_model.safetensors"))
    assert source["patch_embedding.weight"].shape[1] == 12
    m = model()
    report = load_wan_transformer(m, tmp_path / "wan")
    assert torch.equal(m.patch_embedding.weight, source["patch_embedding.weight"][:, :4])
    assert set(report.sliced) == {"patch_embedding.weight"}
    assert any(n.startswith("condition_embedder.image_embedder.") for n in report.skipped)
    assert "blocks.0.attn2.add_k_proj.weight" in report.skipped
    assert "blocks.1.attn2.norm_added_k.weight" in report.skipped


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_layers": 3}, "num_layers"),
        ({"ffn_dim": 96}, "ffn_dim"),
        ({"attention_head_dim": 8}, "dim"),
        ({"out_channels": 8}, "out_channels"),
    ],
)
def test_mismatching_wan_config_raises_naming_the_field(
    tmp_path: Path, overrides: dict[str, object], field: str
) -> None:
    wan(**overrides).save_pretrained(tmp_path / "wan")
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        load_wan_transformer(m, tmp_path / "wan")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_wan_without_a_backbone_weight_raises(tmp_path: Path) -> None:
    wan().save_pretrained(tmp_path / "wan")
    weights = tmp_path / "wan" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["blocks.1.norm2.weight"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"blocks\.1\.norm2\.weight"):
        load_wan_transformer(model(), tmp_path / "wan")
