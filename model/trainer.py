"""A plain training loop for the WAM: AdamW, grad accumulation, AMP on GPU, checkpoint/resume.

It owns no data loading and no distribution, so Ray Train's TorchTrainer can wrap it:
`train_loop_per_worker` builds a Trainer around the prepared model and feeds it batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from wamfleet.model.objective import FlowMatchingObjective, WAMBatch
from wamfleet.model.transformer import WorldActionModel


class TrainerConfig(BaseModel):
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    # After warmup: hold the rate, or follow a cosine down to lr * min_lr_ratio at decay_steps
    # (a short run's last steps at a small rate settle the action head: see docs/efficacy.md).
    schedule: Literal["constant", "cosine"] = "constant"
    decay_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_accum: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    amp: str = Field(default="auto", pattern="^(auto|bf16|off)$")  # auto: bf16 on CUDA, fp32 on CPU
    # Recompute each block's activations in backward: far less memory for long Wan-shaped windows.
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass
class StepMetrics:
    step: int
    loss: float
    video_loss: float
    action_loss: float
    lr: float
    grad_norm: float


class Trainer:
    def __init__(
        self,
        model: WorldActionModel,
        config: TrainerConfig | None = None,
        device: str | None = None,
        objective: torch.nn.Module | None = None,
    ) -> None:
        """`objective`: the loss module to step through, e.g. a DDP-wrapped FlowMatchingObjective
        of `model`; by default the plain objective of `model`."""
        self.config = config or TrainerConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.model.gradient_checkpointing = self.config.gradient_checkpointing
        self.objective = objective if objective is not None else FlowMatchingObjective(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model: no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(self.config.seed)
        use_bf16 = self.config.amp == "bf16" or (self.config.amp == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

    def _lr(self) -> float:
        c = self.config
        step = self.step_count
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "constant" or c.decay_steps <= c.warmup_steps:
            return c.lr
        progress = min(1.0, (step - c.warmup_steps) / (c.decay_steps - c.warmup_steps))
        floor = c.lr * c.min_lr_ratio
        return floor + (c.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def step(self, batches: list[WAMBatch]) -> StepMetrics:
        """One optimizer step over `grad_accum` micro-batches."""
        if len(batches) != self.config.grad_accum:
            raise ValueError(f"batches: expected {self.config.grad_accum} micro-batches, got {len(batches)}")
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        totals = [0.0, 0.0, 0.0]
        self.optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                losses = self.objective(batch.to(self.device), self.generator)
            (losses[0] / len(batches)).backward()
            for i, value in enumerate(losses):
                totals[i] += float(value.detach()) / len(batches)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"non-finite gradient norm at step {self.step_count}")
        self.optimizer.step()
        self.step_count += 1
        loss, video_loss, action_loss = totals
        return StepMetrics(self.step_count, loss, video_loss, action_loss, lr=self._lr(), grad_norm=grad_norm)

    def fit(self, batches: Iterable[WAMBatch], steps: int) -> Iterator[StepMetrics]:
        """Steps until `steps` optimizer steps are done (from the current step count)."""
        source = iter(batches)
        while self.step_count < steps:
            micro = [next(source) for _ in range(self.config.grad_accum)]
            yield self.step(micro)

    def save_state(self, path: Path) -> None:
        """Everything needed to resume bit-for-bit: weights, optimizer, step, RNG states."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "config": self.config.model_dump(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
