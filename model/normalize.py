"""State/action normalisation (q01/q99 to [-1, 1], as DreamZero) and padding to the model's width."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

# A dimension whose q01..q99 span is at most this never varied in the data (an unused gripper).
CONSTANT_SPAN = 1e-8


@dataclass(frozen=True)
class QuantileNormalizer:
    """Maps [q01, q99] per dimension to [-1, 1], clamping outside it (as DreamZero).

    Clamping both ways means the robot is never sent an action outside the range seen in the
    data. A constant dimension (q99 - q01 <= CONSTANT_SPAN) normalises to 0 and denormalises to
    its constant whatever the model predicts for it.

    Non-finite values are not clamped: NaN stays NaN and +-inf stays +-inf on both paths, so a
    broken model output reaches the serving layer's finiteness check (which rejects it) instead
    of turning into a plausible action at a bound.
    """

    q01: NDArray[np.float32]
    q99: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.q01.ndim != 1 or self.q01.shape != self.q99.shape:
            raise ValueError(
                f"q01/q99: expected two 1-D arrays of one length, got shapes {self.q01.shape} and "
                f"{self.q99.shape}"
            )
        if not (np.all(np.isfinite(self.q01)) and np.all(np.isfinite(self.q99))):
            raise ValueError("q01/q99: must be finite")
        if np.any(self.q99 < self.q01):
            raise ValueError(f"q99: below q01 in dimensions {np.flatnonzero(self.q99 < self.q01).tolist()}")

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

    def _check(self, x: ArrayLike) -> NDArray[np.float64]:
        # float64 inside so that denormalize(+-1) lands exactly on q01/q99 once cast back.
        arr = np.asarray(x, dtype=np.float32).astype(np.float64)
        if arr.ndim == 0 or arr.shape[-1] != self.dim:
            raise ValueError(
                f"values: last dimension {arr.shape[-1] if arr.ndim else None} does not match the "
                f"normaliser's {self.dim}"
            )
        return arr

    def normalize(self, x: ArrayLike) -> NDArray[np.float32]:
        """Values -> [-1, 1]; constant dimensions -> 0; NaN and +-inf pass through."""
        arr = self._check(x)
        lo, hi = self.q01.astype(np.float64), self.q99.astype(np.float64)
        varies = hi - lo > CONSTANT_SPAN
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.clip(2.0 * (arr - lo) / np.where(varies, hi - lo, 1.0) - 1.0, -1.0, 1.0)
        out = np.where(varies, scaled, 0.0)
        return np.where(np.isfinite(arr), out, arr).astype(np.float32)

    def denormalize(self, y: ArrayLike) -> NDArray[np.float32]:
        """[-1, 1] -> [q01, q99], clamping first; constant dimensions -> the constant.

        NaN and +-inf pass through unchanged (see the class docstring): clamping them would hide
        a broken model behind a valid-looking action.
        """
        arr = self._check(y)
        lo, hi = self.q01.astype(np.float64), self.q99.astype(np.float64)
        t = (np.clip(arr, -1.0, 1.0) + 1.0) / 2.0
        out = np.clip(lo + t * (hi - lo), lo, hi)  # the outer clip guards against rounding
        out = np.where(hi - lo > CONSTANT_SPAN, out, lo)
        return np.where(np.isfinite(arr), out, arr).astype(np.float32)


def pad_last(x: Tensor | NDArray[np.float32], width: int) -> Tensor:
    """Zero-pads the last dimension to `width` (the model's max state/action dim)."""
    # A copy: a request's arrays may be read-only views of the message buffer.
    t = torch.tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, Tensor) else x.float()
    if t.shape[-1] > width:
        raise ValueError(f"values: {t.shape[-1]} dims exceed the model's padded width {width}")
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]))


def dim_mask(dim: int, width: int, batch: int = 1) -> Tensor:
    mask = torch.zeros(batch, width)
    mask[:, :dim] = 1.0
    return mask
