"""The first frame's CLIP image tokens, Wan 2.1 I2V's (and DreamZero's) image context.

Wan I2V cross-attends to the penultimate layer of a CLIP ViT-H/14 run on the conditioning
frame (257 tokens of 1280). DreamZero feeds it the tiled camera canvas squeezed to 224 x 224
(bicubic) and normalised with CLIP's statistics; so does this encoder. Weights come from a
local transformers `CLIPVisionModel` directory (Wan's `image_encoder`), or are random from the
config (tests, small models), in which case the policy saves them next to the codec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from wamfleet.model.config import ImageConditioningConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _tower(cfg: ImageConditioningConfig) -> CLIPVisionModel:
    """The CLIP tower: local weights only (`local_files_only`, not the process's HF_HUB_OFFLINE,
    which huggingface_hub reads once at import), or random ones from the config."""
    if cfg.pretrained is not None:
        if not cfg.pretrained.is_dir():
            raise ValueError(f"image_conditioning.pretrained: {cfg.pretrained} is not a directory")
        model: CLIPVisionModel = CLIPVisionModel.from_pretrained(cfg.pretrained, local_files_only=True)
        got = (model.config.hidden_size, model.config.image_size, model.config.patch_size)
        want = (cfg.image_dim, cfg.image_size, cfg.patch_size)
        if got != want:
            raise ValueError(
                f"image_conditioning: the CLIP tower in {cfg.pretrained} has (hidden, image, patch) "
                f"{got}, the config says {want}"
            )
        return model
    config = CLIPVisionConfig(
        hidden_size=cfg.image_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate_size,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu",
    )
    return CLIPVisionModel(config)


class ImageEncoder(nn.Module):
    """Frozen CLIP vision tower: canvas (B, 3, H, W) in [-1, 1] -> (B, tokens, image_dim)."""

    mean: Tensor
    std: Tensor

    def __init__(self, cfg: ImageConditioningConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tower = _tower(cfg).eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def encode(self, canvas: Tensor) -> Tensor:
        size = (self.cfg.image_size, self.cfg.image_size)
        x = F.interpolate(canvas.float(), size=size, mode="bicubic", align_corners=False)
        x = ((x * 0.5 + 0.5) - self.mean.to(x.device)) / self.std.to(x.device)
        dtype = next(self.tower.parameters()).dtype
        out = self.tower(pixel_values=x.to(dtype), output_hidden_states=True)
        hidden: Tensor = out.hidden_states[-2]  # the penultimate block, as Wan and DreamZero use
        return hidden.float()
