"""LoRA fine-tuning of the backbone, with the embodiment heads trained fully (DreamZero's recipe).

A new robot brings new action/state heads; the shared DiT is adapted with low-rank updates on
its attention and FFN linears. Adapters are saved apart from the base weights together with the
base checkpoint's sha256, because an adapter only means something on the base it was trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from wamfleet.model.artifacts import NEW_PARAMETER_PREFIXES, atomic_directory, file_sha256, has_lora
from wamfleet.model.transformer import WorldActionModel

# attn1/attn2 q, k, v, out and both FFN linears of every block (regex, full match on module names).
TARGET_MODULES = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"
ADAPTER_NAME = "default"
LORA_FILE = "adapter.safetensors"
LORA_MANIFEST = "lora.json"
LORA_FORMAT_VERSION = 1


def is_trained_fully(name: str) -> bool:
    """The embodiment heads and the action positions: trained in full next to the adapters."""
    return name.startswith(NEW_PARAMETER_PREFIXES)


def apply_lora(
    model: WorldActionModel, rank: int = 4, alpha: int | None = None, dropout: float = 0.0
) -> WorldActionModel:
    """Injects LoRA adapters in place (module names keep working) and freezes the backbone."""
    if has_lora(model):
        raise ValueError("model: already has LoRA adapters (merge_lora first to stack another)")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=TARGET_MODULES,
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name or is_trained_fully(name))
    return model


def _lora_config(model: nn.Module) -> LoraConfig:
    configs = getattr(model, "peft_config", {})
    if ADAPTER_NAME not in configs:
        raise ValueError("model: has no LoRA adapters (apply_lora first)")
    config = configs[ADAPTER_NAME]
    assert isinstance(config, LoraConfig)
    return config


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict under plain names with every unmerged adapter added in; `model` is unchanged."""
    deltas: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            if not isinstance(module, LoraLinear):
                raise TypeError(f"{name}: cannot merge a {type(module).__name__} adapter")
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter)
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        out[plain] = value + deltas[plain].to(value.dtype) if plain in deltas else value
    return out


@torch.no_grad()
def merge_lora(model: WorldActionModel) -> WorldActionModel:
    """Folds the adapters into the base weights and removes them: a plain, fully trainable model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.requires_grad_(True)
    return model


def save_lora(directory: str | os.PathLike[str], model: WorldActionModel, base_sha256: str) -> str:
    """Writes adapter + head weights and the base checkpoint's sha256; returns the file's sha256."""
    config = _lora_config(model)
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if ".lora_" in k or is_trained_fully(k)
    }
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / LORA_FILE), metadata={"format": "pt"})
        sha256 = file_sha256(tmp / LORA_FILE)
        manifest = {
            "format_version": LORA_FORMAT_VERSION,
            "base_sha256": base_sha256,
            "sha256": sha256,
            "rank": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": TARGET_MODULES,
            "embodiments": [e.model_dump() for e in model.config.embodiments],
        }
        (tmp / LORA_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return sha256


def _read_manifest(root: Path) -> dict[str, Any]:
    for name in (LORA_MANIFEST, LORA_FILE):
        if not (root / name).is_file():
            raise ValueError(f"{name}: missing from LoRA directory {root}")
    manifest: dict[str, Any] = json.loads((root / LORA_MANIFEST).read_text())
    if manifest.get("format_version") != LORA_FORMAT_VERSION:
        raise ValueError(f"{LORA_MANIFEST}: unsupported format_version {manifest.get('format_version')!r}")
    if file_sha256(root / LORA_FILE) != manifest.get("sha256"):
        raise ValueError(
            f"{LORA_FILE}: sha256 does not match {LORA_MANIFEST}; the file is corrupt or was replaced"
        )
    return manifest


def load_lora(
    directory: str | os.PathLike[str], model: WorldActionModel, base_sha256: str
) -> WorldActionModel:
    """Applies saved adapters and heads to `model`, which must be the base they were trained on.

    Missing embodiment heads are added first; adapters are injected unless already present.
    """
    root = Path(directory)
    manifest = _read_manifest(root)
    if manifest["base_sha256"] != base_sha256:
        raise ValueError(
            f"base_sha256: this LoRA was trained on base checkpoint {manifest['base_sha256']}, not on "
            f"{base_sha256}; load it onto the base it was trained on"
        )
    known = {e.name for e in model.config.embodiments}
    for head in manifest["embodiments"]:
        if head["name"] not in known:
            model.add_embodiment(head["name"], head["state_dim"], head["action_dim"])
    if not has_lora(model):
        apply_lora(model, manifest["rank"], manifest["alpha"], manifest["dropout"])
    elif _lora_config(model).r != manifest["rank"]:
        raise ValueError(
            f"rank: the model's adapters have rank {_lora_config(model).r}, the file {manifest['rank']}"
        )
    state = load_file(str(root / LORA_FILE))
    expected = {k for k in model.state_dict() if ".lora_" in k}
    if unknown := sorted(set(state) - set(model.state_dict())):
        raise ValueError(f"{LORA_FILE}: tensors the model has no parameter for: {unknown[:5]}")
    if absent := sorted(expected - set(state)):
        raise ValueError(f"{LORA_FILE}: adapter tensors missing: {absent[:5]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{LORA_FILE}: does not fit the model: {e}") from e
    return model
