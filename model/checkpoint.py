"""Standalone model checkpoints, and loading diffusers Wan 2.1 weights into the backbone.

A checkpoint directory holds everything serving needs and nothing from training:

    model.safetensors   the state dict (LoRA adapters merged in: a checkpoint never needs peft)
    config.json         the WAMConfig
    embodiments.json    per-embodiment specs and normalisation stats, opaque to this layer
    checkpoint.json     format version, sha256 of model.safetensors, parameter count, metadata

It is written to a temporary directory and renamed into place, so a reader never sees half of
one, and the sha256 is checked on load, so a corrupt or swapped weights file fails loudly.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from wamfleet.model.artifacts import NEW_PARAMETER_PREFIXES, atomic_directory, file_sha256, has_lora
from wamfleet.model.config import WAMConfig
from wamfleet.model.transformer import RotaryEmbedding, WorldActionModel

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EMBODIMENTS_FILE = "embodiments.json"
MANIFEST_FILE = "checkpoint.json"


# Files ---------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(directory: Path, name: str) -> Any:
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{name}: missing from checkpoint {directory}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not valid JSON ({e})") from e


# Checkpoints ---------------------------------------------------------------------------------


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights under plain WorldActionModel names (LoRA merged, on the CPU)."""
    if has_lora(model):
        from wamfleet.model.lora import merged_state_dict  # peft only when adapters exist

        state = merged_state_dict(model)
    else:
        state = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: WorldActionModel,
    *,
    embodiments: dict[str, dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Writes a standalone checkpoint atomically; returns the sha256 of model.safetensors."""
    state = plain_state_dict(model)
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        sha256 = file_sha256(tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(model.config.model_dump_json(indent=2) + "\n")
        _write_json(tmp / EMBODIMENTS_FILE, embodiments or {})
        manifest = {
            "format_version": FORMAT_VERSION,
            "sha256": sha256,
            "num_parameters": sum(t.numel() for t in state.values()),
            "created": datetime.now(UTC).isoformat(),
            "metadata": metadata or {},
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
    return sha256


@dataclass
class LoadedCheckpoint:
    model: WorldActionModel
    config: WAMConfig
    embodiments: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    sha256: str


def load_checkpoint(
    directory: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedCheckpoint:
    """Loads and verifies a checkpoint; the model comes back in eval mode on `device`.

    `dtype` casts the floating weights (None keeps the stored dtype). The model is built on the
    meta device and each tensor is read straight into its final dtype and device, so loading
    needs one copy of the weights, not a random init plus a state dict (2x, 115 GB for 14B).
    On the CPU without a cast, safetensors hands back copy-on-write views of the mapped file:
    the weights share the page cache until written to.

    Raises ValueError naming the file on a missing file, a sha256 mismatch or an invalid config.
    """
    root = Path(directory)
    manifest = _read_json(root, MANIFEST_FILE)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{MANIFEST_FILE}: unsupported format_version {version!r} (max {FORMAT_VERSION})")
    weights = root / MODEL_FILE
    if not weights.is_file():
        raise ValueError(f"{MODEL_FILE}: missing from checkpoint {root}")
    sha256 = file_sha256(weights)
    if sha256 != manifest.get("sha256"):
        raise ValueError(
            f"{MODEL_FILE}: sha256 {sha256} does not match {manifest.get('sha256')} recorded in "
            f"{MANIFEST_FILE}; the file is corrupt or was replaced"
        )
    try:
        config = WAMConfig.model_validate(_read_json(root, CONFIG_FILE))
    except ValidationError as e:
        raise ValueError(f"{CONFIG_FILE}: not a valid model config: {e}") from e
    embodiments = _read_json(root, EMBODIMENTS_FILE)
    target = torch.device(device)
    with torch.device("meta"):
        model = WorldActionModel(config)
    try:
        model.load_state_dict(_read_weights(weights, target, dtype), strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{MODEL_FILE}: does not fit the model of {CONFIG_FILE}: {e}") from e
    # Non-persistent buffers are computed in __init__, not stored: build them for real.
    model.rope = RotaryEmbedding(config.head_dim, config.rope_max_seq_len).to(target)
    _check_materialized(model)
    model.eval()
    return LoadedCheckpoint(model, config, embodiments, manifest.get("metadata", {}), sha256)


def _read_weights(path: Path, device: torch.device, dtype: torch.dtype | None) -> dict[str, Tensor]:
    """Every tensor of a safetensors file on `device`, floating ones cast to `dtype`, one at a time.

    Casting on the CPU reads with pread where safetensors has it (>= 0.8): through the default
    mmap every page read stays resident until the file is closed, so a fp32 -> bf16 load would
    peak at 1.5x the file instead of 0.5x.
    """
    state: dict[str, Tensor] = {}
    with ExitStack() as stack:
        f = None
        if dtype is not None and device.type == "cpu":
            with suppress(TypeError):  # an older safetensors without backends: mmap it is
                f = stack.enter_context(safe_open(str(path), framework="pt", device="cpu", backend="pread"))
        if f is None:
            f = stack.enter_context(safe_open(str(path), framework="pt", device=str(device)))
        for name in f.keys():  # noqa: SIM118 (not a dict)
            tensor = f.get_tensor(name)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor
    return state


def _check_materialized(model: nn.Module) -> None:
    """Raises ValueError naming a parameter or buffer the checkpoint left on the meta device."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise ValueError(f"{name}: still on the meta device after loading (neither stored nor rebuilt)")


# Wan 2.1 weights -----------------------------------------------------------------------------

WAN_WEIGHTS = "diffusion_pytorch_model.safetensors"
WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"


@dataclass
class WanLoadReport:
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # our parameters Wan has no weights for


def _check_wan_config(wan: dict[str, Any], cfg: WAMConfig) -> None:
    """Raises ValueError naming the first Wan config field that does not fit `cfg`.

    A Wan I2V checkpoint (36 input channels, a CLIP image branch) needs a config with
    `image_conditioning`, and then loads whole: its first-frame and mask channels and its image
    cross-attention are what make the pretrained prior useful, as DreamZero keeps them.
    """
    if wan.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise ValueError(f"_class_name: expected WanTransformer3DModel, got {wan['_class_name']!r}")
    heads, head_dim = wan.get("num_attention_heads"), wan.get("attention_head_dim")
    dim = heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None
    image = cfg.image_conditioning
    i2v = wan.get("image_dim") is not None
    if i2v and image is None:
        raise ValueError(
            f"image_conditioning: the Wan checkpoint is image-to-video (in_channels "
            f"{wan.get('in_channels')}, image_dim {wan.get('image_dim')}); set image_conditioning in the "
            "model config (the wan2.1-14b preset has it) to keep its first-frame channels and image context"
        )
    expected: list[tuple[str, Any, Any]] = [
        ("dim", dim, cfg.dim),
        ("num_attention_heads", heads, cfg.num_heads),
        ("num_layers", wan.get("num_layers"), cfg.num_layers),
        ("ffn_dim", wan.get("ffn_dim"), cfg.ffn_dim),
        ("text_dim", wan.get("text_dim"), cfg.text.dim),
        ("patch_size", tuple(wan.get("patch_size") or ()), cfg.patch_size),
        ("freq_dim", wan.get("freq_dim"), cfg.freq_dim),
        ("eps", wan.get("eps", 1e-6), cfg.eps),
        ("in_channels", wan.get("in_channels"), cfg.in_channels),
        ("out_channels", wan.get("out_channels") or wan.get("in_channels"), cfg.vae.z_dim),
        ("cross_attn_norm", wan.get("cross_attn_norm", True), True),
        ("qk_norm", wan.get("qk_norm", "rms_norm_across_heads"), "rms_norm_across_heads"),
        ("image_dim", wan.get("image_dim"), image.image_dim if image is not None else None),
        ("added_kv_proj_dim", wan.get("added_kv_proj_dim"), cfg.dim if image is not None else None),
        ("pos_embed_seq_len", wan.get("pos_embed_seq_len"), None),
    ]
    for name, got, want in expected:
        if got != want:
            raise ValueError(f"{name}: the Wan checkpoint has {got!r}, the model config needs {want!r}")


def _wan_files(root: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (single file or sharded with an index)."""
    if (root / WAN_INDEX).is_file():
        weight_map = json.loads((root / WAN_INDEX).read_text())["weight_map"]
        return {name: root / shard for name, shard in weight_map.items()}
    if (root / WAN_WEIGHTS).is_file():
        with safe_open(str(root / WAN_WEIGHTS), framework="pt") as f:
            return {name: root / WAN_WEIGHTS for name in f.keys()}  # noqa: SIM118 (not a dict)
    raise ValueError(f"{WAN_WEIGHTS}: neither it nor {WAN_INDEX} is in {root}")


def load_wan_transformer(model: WorldActionModel, path: str | os.PathLike[str]) -> WanLoadReport:
    """Copies diffusers WanTransformer3DModel weights (a local directory) into `model` by name.

    Everything is checked before anything is copied, so a failed load leaves `model` intact.
    Tensors are read one at a time and cast into the model's own dtype and device in place, so
    build the model where it will run (`with torch.device("cuda"): ...`, then `.to(bf16)`).
    """
    if has_lora(model):
        raise ValueError("model: load Wan weights before apply_lora (the model has LoRA adapters)")
    root = Path(path)
    if not (root / "config.json").is_file() and (root / "transformer" / "config.json").is_file():
        root = root / "transformer"  # a whole diffusers pipeline directory
    if not (root / "config.json").is_file():
        raise ValueError(f"config.json: missing from Wan directory {root}")
    cfg = model.config
    _check_wan_config(json.loads((root / "config.json").read_text()), cfg)

    params = dict(model.named_parameters())
    report = WanLoadReport()
    files = _wan_files(root)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(str(p), framework="pt")) for p in set(files.values())}
        for name, file in sorted(files.items()):
            if name not in params:
                raise ValueError(f"{name}: a Wan weight the model has no parameter for")
            shape = tuple(handles[file].get_slice(name).get_shape())
            want = tuple(params[name].shape)
            if shape != want:
                raise ValueError(f"{name}: the Wan weight has shape {shape}, the model needs {want}")
            report.loaded.append(name)
        missing = sorted(set(params) - set(report.loaded))
        report.new = [n for n in missing if n.startswith(NEW_PARAMETER_PREFIXES)]
        if len(report.new) != len(missing):
            raise ValueError(f"{[n for n in missing if n not in report.new]}: not in the Wan checkpoint")
        with torch.no_grad():
            for name in report.loaded:
                params[name].copy_(handles[files[name]].get_tensor(name))
    return report
