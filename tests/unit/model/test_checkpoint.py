"""Checkpoints round-trip bit-exactly and fail loudly; Wan weights load and compute what Wan computes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tests.unit.model.wam_support import synthetic_batch
from wamfleet.model import checkpoint as checkpoint_module
from wamfleet.model.artifacts import NEW_PARAMETER_PREFIXES, file_sha256
from wamfleet.model.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    load_wan_transformer,
    save_checkpoint,
)
from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch, flow_matching_loss
from wamfleet.model.transformer import Kind, RotaryEmbedding, WorldActionModel

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


def test_a_weights_file_that_does_not_fit_the_config_raises_naming_both(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", model())
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    del state["proj_out.bias"]
    save_file(state, str(weights))
    manifest = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    manifest["sha256"] = file_sha256(weights)
    (tmp_path / "ckpt" / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"model\.safetensors: does not fit the model of config\.json"):
        load_checkpoint(tmp_path / "ckpt")


# Loading in place ------------------------------------------------------------------------------


def tensors(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*m.named_parameters(), *m.named_buffers()]


def test_a_bf16_load_casts_every_weight_and_computes_what_the_cast_fp32_model_computes(
    tmp_path: Path,
) -> None:
    m, b = model(), batch()
    save_checkpoint(tmp_path / "ckpt", m)
    loaded = load_checkpoint(tmp_path / "ckpt", dtype=torch.bfloat16).model
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {t.dtype for t in loaded.buffers()} == {torch.float32}  # RoPE tables stay exact
    reference = copy.deepcopy(m)
    for p in reference.parameters():
        p.data = p.data.to(torch.bfloat16)
    assert torch.equal(loss(reference, b), loss(loaded, b))


def test_the_stored_dtype_is_kept_without_a_dtype(tmp_path: Path) -> None:
    m = model()
    for p in m.parameters():
        p.data = p.data.to(torch.bfloat16)
    save_checkpoint(tmp_path / "ckpt", m)
    loaded = load_checkpoint(tmp_path / "ckpt").model
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), loaded.parameters(), strict=True))
    as_fp32 = load_checkpoint(tmp_path / "ckpt", dtype=torch.float32).model
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}


def test_a_safetensors_without_backends_still_loads_a_cast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors < 0.8 has no pread backend: the cast falls back to the mapped file."""
    m = model()
    save_checkpoint(tmp_path / "ckpt", m)

    def without_backends(path: str, framework: str, device: str = "cpu", **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError("safe_open() got an unexpected keyword argument 'backend'")
        return safe_open(path, framework=framework, device=device)

    monkeypatch.setattr(checkpoint_module, "safe_open", without_backends)
    loaded = load_checkpoint(tmp_path / "ckpt", dtype=torch.bfloat16).model
    assert all(
        torch.equal(a.to(torch.bfloat16), b) for a, b in zip(m.parameters(), loaded.parameters(), strict=True)
    )


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_nothing_is_left_on_the_meta_device(tmp_path: Path, dtype: torch.dtype | None) -> None:
    save_checkpoint(tmp_path / "ckpt", model())
    loaded = load_checkpoint(tmp_path / "ckpt", dtype=dtype).model
    assert all(t.device == torch.device("cpu") for _, t in tensors(loaded))
    expected = RotaryEmbedding(loaded.config.head_dim, loaded.config.rope_max_seq_len)
    assert torch.equal(loaded.rope.freqs_cos, expected.freqs_cos)
    assert torch.equal(loaded.rope.freqs_sin, expected.freqs_sin)


def test_a_buffer_left_on_the_meta_device_raises_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-persistent buffer added to the model without rebuilding it in load_checkpoint."""
    save_checkpoint(tmp_path / "ckpt", model())

    class WithTable(WorldActionModel):
        def __init__(self, cfg: WAMConfig) -> None:
            super().__init__(cfg)
            self.register_buffer("table", torch.ones(3), persistent=False)

    monkeypatch.setattr(checkpoint_module, "WorldActionModel", WithTable)
    with pytest.raises(ValueError, match=r"^table: still on the meta device"):
        load_checkpoint(tmp_path / "ckpt")


# The subprocess imports first, then measures how far its peak resident set rises over loading and
# then reading every weight once (what a first forward does), for each dtype in turn. Peak is VmHWM,
# reset between loads through clear_refs, not ru_maxrss: Linux carries ru_maxrss over from the
# parent through fork and exec, so under pytest it starts at pytest's own size.
PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import gc, sys
    import torch
    from wamfleet.model.checkpoint import load_checkpoint
    torch.set_num_threads(1)

    def status(field):
        line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    for name in sys.argv[2:]:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak := current
        before = status("VmRSS")
        cast = {} if name == "None" else {"dtype": getattr(torch, name)}
        m = load_checkpoint(sys.argv[1], **cast).model
        with torch.no_grad():
            for p in m.parameters():
                p.sum()
        print(status("VmHWM") - before)
        del m
    """
)


def peak_rss_growth(directory: Path, *dtypes: str) -> list[int]:
    """Peak RSS growth in bytes over loading `directory` once per dtype ("None" keeps the stored one)."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(directory), *dtypes],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [int(line) for line in result.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_loading_holds_one_copy_of_the_weights(tmp_path: Path) -> None:
    """A random init plus a loaded state dict is 2x the weights: 115 GB of host memory for 14B."""
    torch.manual_seed(0)
    cfg = WAMConfig.preset_named(
        "tiny",
        dim=512,
        num_layers=10,
        num_heads=8,
        ffn_dim=2048,
        embodiments=[{"name": "a", "state_dim": 4, "action_dim": 4}],
    )
    save_checkpoint(tmp_path / "ckpt", WorldActionModel(cfg))  # 45M parameters, 181 MB in fp32
    size = (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    as_stored, as_bf16 = peak_rss_growth(tmp_path / "ckpt", "None", "bfloat16")
    assert as_stored < 1.3 * size
    assert as_bf16 < 0.8 * size  # half the file, plus one tensor read at a time


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
        cross = m.cross_context(text, None)
        hidden = m.run(tokens, torch.full((1, tokens.shape[1]), 500.0), meta, cross)
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


TINY_CLIP = {
    "image_dim": 32,
    "layers": 1,
    "heads": 2,
    "intermediate_size": 64,
    "image_size": 28,
    "patch_size": 14,
}


def test_i2v_wan_loads_whole_and_computes_what_wan_i2v_computes(tmp_path: Path) -> None:
    """Wan I2V's first-frame + mask channels and its CLIP image cross-attention are kept (DreamZero)."""
    cfg = WAMConfig.preset_named("tiny", embodiments=config().embodiments, image_conditioning=TINY_CLIP)
    assert cfg.in_channels == 4 + 2 + 4  # noisy latents, mask (temporal factor 2), first-frame latents
    source = wan(in_channels=cfg.in_channels, image_dim=32, added_kv_proj_dim=64)
    source.save_pretrained(tmp_path / "wan")
    torch.manual_seed(0)
    m = WorldActionModel(cfg).eval()
    report = load_wan_transformer(m, tmp_path / "wan")
    assert set(report.loaded) == set(source.state_dict())
    assert "condition_embedder.image_embedder.ff.net.0.proj.weight" in report.loaded
    assert "blocks.1.attn2.norm_added_k.weight" in report.loaded

    g = torch.Generator().manual_seed(3)
    latents, channels = torch.randn(1, 4, 3, 8, 16, generator=g), torch.randn(1, 6, 3, 8, 16, generator=g)
    text, image = torch.randn(1, 512, 384, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        expected = source(
            hidden_states=torch.cat([latents, channels], dim=1),
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=text,
            encoder_hidden_states_image=image,
        ).sample
        tokens, meta = m.video_tokens(latents, 0, Kind.COND, 0, channels)
        hidden = m.run(
            tokens, torch.full((1, tokens.shape[1]), 500.0), meta, m.cross_context(text, None, image)
        )
        got = m.unpatchify(hidden, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_i2v_wan_refuses_a_config_without_image_conditioning(tmp_path: Path) -> None:
    wan(in_channels=10, image_dim=32, added_kv_proj_dim=64).save_pretrained(tmp_path / "wan")
    with pytest.raises(ValueError, match=r"^image_conditioning: the Wan checkpoint is image-to-video"):
        load_wan_transformer(model(), tmp_path / "wan")


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
