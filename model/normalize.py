"""State/action normalisation (q01/q99 to [-1, 1], as DreamZero) and padding to the model's width."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor


@dataclass(frozen=True)
class QuantileNormalizer:
    """Maps [q01, q99] per dimension to [-1, 1]; constant dimensions map to 0."""

    q01: NDArray[np.float32]
    q99: NDArray[np.float32]

    @classmethod
    def fit(cls, values: ArrayLike) -> QuantileNormalizer:
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"values: expected a non-empty (N, dim) array, got shape {x.shape}")
        return cls(
            np.quantile(x, 0.01, axis=0).astype(np.float32), np.quantile(x, 0.99, axis=0).astype(np.float32)
        )

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> QuantileNormalizer:
        return cls(np.asarray(data["q01"], np.float32), np.asarray(data["q99"], np.float32))

    def to_dict(self) -> dict[str, list[float]]:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist()}

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    def _span(self) -> NDArray[np.float32]:
        span = self.q99 - self.q01
        return np.where(span > 1e-8, span, 1.0).astype(np.float32)

    def normalize(self, x: ArrayLike) -> NDArray[np.float32]:
        arr = np.asarray(x, dtype=np.float32)
        if arr.shape[-1] != self.dim:
            raise ValueError(
                f"values: last dimension {arr.shape[-1]} does not match the normaliser's {self.dim}"
            )
        out = 2.0 * (arr - self.q01) / self._span() - 1.0
        return np.where(self.q99 - self.q01 > 1e-8, out, 0.0).astype(np.float32)

    def denormalize(self, y: ArrayLike) -> NDArray[np.float32]:
        arr = np.asarray(y, dtype=np.float32)
        return ((arr + 1.0) / 2.0 * self._span() + self.q01).astype(np.float32)


def pad_last(x: Tensor | NDArray[np.float32], width: int) -> Tensor:
    """Zero-pads the last dimension to `width` (the model's max state/action dim)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, Tensor) else x.float()
    if t.shape[-1] > width:
        raise ValueError(f"values: {t.shape[-1]} dims exceed the model's padded width {width}")
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]))


def dim_mask(dim: int, width: int, batch: int = 1) -> Tensor:
    mask = torch.zeros(batch, width)
    mask[:, :dim] = 1.0
    return mask
