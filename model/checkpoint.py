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

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from wamfleet.model.config import WAMConfig
from wamfleet.model.transformer import WorldActionModel

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EMBODIMENTS_FILE = "embodiments.json"
MANIFEST_FILE = "checkpoint.json"
# Parameters that exist only in the World Action Model (never in Wan weights).
NEW_PARAMETER_PREFIXES = ("action_pos", "action_encoders.", "state_encoders.", "action_decoders.")


# Files ---------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary sibling directory to fill; on success it replaces `directory`.

    An existing directory is moved aside first and deleted after, so readers see either the
    old complete directory or the new one (or, for an instant, none), never a partial one.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            target.rename(old / "dir")
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


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
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Loads and verifies a checkpoint; the model comes back in eval mode on `device`.

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
    model = WorldActionModel(config)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{MODEL_FILE}: does not fit the model of {CONFIG_FILE}: {e}") from e
    model.to(device).eval()
    return LoadedCheckpoint(model, config, embodiments, manifest.get("metadata", {}), sha256)


# Wan 2.1 weights -----------------------------------------------------------------------------

WAN_WEIGHTS = "diffusion_pytorch_model.safetensors"
WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# Wan I2V's image conditioning (CLIP image embedder and the extra cross-attention keys/values):
# the World Action Model conditions on the first frame through its sequence instead.
_IMAGE_KEYS = re.compile(
    r"condition_embedder\.image_embedder\..*"
    r"|blocks\.\d+\.attn2\.(add_k_proj|add_v_proj|norm_added_k|norm_added_q)\..*"
)


@dataclass
class WanLoadReport:
    loaded: list[str] = field(default_factory=list)
    sliced: dict[str, str] = field(default_factory=dict)  # name -> what was kept
    skipped: list[str] = field(default_factory=list)  # image-conditioning weights
    new: list[str] = field(default_factory=list)  # our parameters Wan has no weights for


def _check_wan_config(wan: dict[str, Any], cfg: WAMConfig) -> None:
    """Raises ValueError naming the first Wan config field that does not fit `cfg`."""
    if wan.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise ValueError(f"_class_name: expected WanTransformer3DModel, got {wan['_class_name']!r}")
    heads, head_dim = wan.get("num_attention_heads"), wan.get("attention_head_dim")
    dim = heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None
    expected: list[tuple[str, Any, Any]] = [
        ("dim", dim, cfg.dim),
        ("num_attention_heads", heads, cfg.num_heads),
        ("num_layers", wan.get("num_layers"), cfg.num_layers),
        ("ffn_dim", wan.get("ffn_dim"), cfg.ffn_dim),
        ("text_dim", wan.get("text_dim"), cfg.text.dim),
        ("patch_size", tuple(wan.get("patch_size") or ()), cfg.patch_size),
        ("freq_dim", wan.get("freq_dim"), cfg.freq_dim),
        ("eps", wan.get("eps", 1e-6), cfg.eps),
        ("out_channels", wan.get("out_channels") or wan.get("in_channels"), cfg.vae.z_dim),
        ("cross_attn_norm", wan.get("cross_attn_norm", True), True),
        ("qk_norm", wan.get("qk_norm", "rms_norm_across_heads"), "rms_norm_across_heads"),
    ]
    for name, got, want in expected:
        if got != want:
            hint = (
                " (proj_out cannot be sliced: it predicts the video velocity)"
                if name == "out_channels"
                else ""
            )
            raise ValueError(f"{name}: the Wan checkpoint has {got!r}, the model config needs {want!r}{hint}")
    if not isinstance(wan.get("in_channels"), int) or wan["in_channels"] < cfg.vae.z_dim:
        raise ValueError(
            f"in_channels: the Wan checkpoint has {wan.get('in_channels')!r}, need >= {cfg.vae.z_dim}"
        )


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
    Wan I2V's patch embedding has 36 input channels (16 noisy latents, 4 mask, 16 first-frame
    latents, in that order); we condition on the first frame through the token sequence, so only
    the first z_dim channels, those that see the noisy latents, are kept. That is what Wan I2V
    computes when mask and first-frame channels are zero.
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
            if _IMAGE_KEYS.fullmatch(name):
                report.skipped.append(name)
                continue
            if name not in params:
                raise ValueError(f"{name}: a Wan weight the model has no parameter for")
            shape = tuple(handles[file].get_slice(name).get_shape())
            want = tuple(params[name].shape)
            if (
                name == "patch_embedding.weight"
                and shape[1] > want[1]
                and shape[:1] + shape[2:] == want[:1] + want[2:]
            ):
                report.sliced[name] = f"input channels [:{want[1]}] of {shape[1]}"
            elif shape != want:
                raise ValueError(f"{name}: the Wan weight has shape {shape}, the model needs {want}")
            report.loaded.append(name)
        missing = sorted(set(params) - set(report.loaded))
        report.new = [n for n in missing if n.startswith(NEW_PARAMETER_PREFIXES)]
        if len(report.new) != len(missing):
            raise ValueError(f"{[n for n in missing if n not in report.new]}: not in the Wan checkpoint")
        with torch.no_grad():
            for name in report.loaded:
                tensor = handles[files[name]].get_tensor(name)
                if name in report.sliced:
                    tensor = tensor[:, : params[name].shape[1]]
                params[name].copy_(tensor)
    return report
