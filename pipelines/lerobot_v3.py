"""The LeRobot v3.0 dataset format: its layout, names, and stats as LeRobot computes them.

Layout (the one LeRobot v3.0 reads and writes):
  meta/info.json, meta/stats.json, meta/tasks.parquet,
  meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode (lengths, offsets, stats)
  data/chunk-XXX/file-XXX.parquet            frames of many episodes, concatenated
  videos/<key>/chunk-XXX/file-XXX.mp4        per camera, episodes concatenated; an episode's
                                             span is [from_timestamp, to_timestamp) in the file
Stats, dataset-level in meta/stats.json and per episode as `stats/<feature>/<stat>` columns, are
computed as LeRobot's writer computes them, for every feature (images per channel on [0, 1]).
Each episode row written by wamfleet also carries `wamfleet/manifest` (robot, episode id,
outcome, source) so a round trip keeps an episode's identity; datasets from elsewhere lack it.

lerobot_export.py writes this format from episode bundles, lerobot_import.py reads it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_KEY_PREFIX = "observation.images."
MANIFEST_COLUMN = "wamfleet/manifest"


class LeRobotFormatError(ValueError):
    """The directory is not a LeRobot v3.0 dataset wamfleet can read; names what is wrong."""


def image_key(camera: str) -> str:
    return IMAGE_KEY_PREFIX + camera


# Stats, as LeRobot's writer computes them (lerobot/datasets/compute_stats.py, lerobot 0.6.1):
# per episode for every non-string feature, then aggregated into meta/stats.json.
QUANTILE_KEYS = ("q01", "q10", "q50", "q90", "q99")
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_QUANTILE_BINS = 5000

Stats = dict[str, NDArray[Any]]


def _histogram_quantile(cumsum: NDArray[np.float64], edges: NDArray[Any], target: float) -> Any:
    """LeRobot's `_compute_single_quantile`: linear interpolation inside the histogram bin."""
    idx = int(np.searchsorted(cumsum, target))
    if idx == 0:
        return edges[0]
    if idx >= len(cumsum):
        return edges[-1]
    before = cumsum[idx - 1]
    in_bin = cumsum[idx] - before
    if in_bin == 0:
        return edges[idx]
    return edges[idx] + (target - before) / in_bin * (edges[idx + 1] - edges[idx])


def _edges(low: Any, high: Any) -> NDArray[Any]:
    return np.linspace(low - 1e-10, high + 1e-10, _QUANTILE_BINS + 1)


def _quantiles(histograms: list[tuple[NDArray[np.float64], NDArray[Any]]], n: int) -> Stats:
    """q01..q99 per column from its (cumulative histogram, bin edges), as LeRobot reads them."""
    return {
        key: np.array([_histogram_quantile(cumsum, edges, q * n) for cumsum, edges in histograms])
        for key, q in zip(QUANTILE_KEYS, _QUANTILES, strict=True)
    }


def feature_stats(rows: NDArray[Any], count: int | None = None) -> Stats:
    """min/max/mean/std and q01..q99 per column of `rows` (samples, dims), with LeRobot's dtypes
    and its 5000-bin histogram quantiles, so our numbers are the ones LeRobot writes itself.

    `count` is what LeRobot records as the sample count (frames, for images); default: rows."""
    rows = rows.reshape(rows.shape[0], -1)
    rows = rows.astype(np.result_type(rows.dtype, np.float32), copy=False)
    n = rows.shape[0]
    stats: Stats
    if n < 2:
        mean = np.mean(rows, axis=0)
        stats = {"min": np.min(rows, axis=0), "max": np.max(rows, axis=0), "mean": mean}
        stats |= {"std": np.std(rows, axis=0), "count": np.array([n])}
        stats |= {k: mean.copy() for k in QUANTILE_KEYS}
    else:
        low, high = np.min(rows, axis=0), np.max(rows, axis=0)
        mean, mean_sq = np.mean(rows, axis=0), np.mean(rows**2, axis=0)
        histograms = []
        for d in range(rows.shape[1]):
            edges = _edges(low[d], high[d])
            hist, _ = np.histogram(rows[:, d], bins=edges)
            histograms.append((np.cumsum(hist.astype(np.float64)), edges))
        stats = {"min": low, "max": high, "mean": mean}
        stats |= {"std": np.sqrt(np.maximum(0, mean_sq - mean**2)), "count": np.array([n])}
        stats |= _quantiles(histograms, n)
    if count is not None:
        stats["count"] = np.array([count])
    return stats


def _pixel_stats(pixels: NDArray[np.uint8], count: int) -> Stats:
    """`feature_stats` of uint8 (pixels, channels) from 256 value counts per channel: the same
    histograms and quantiles, ~10x faster, and exact sums where LeRobot accumulates in float32
    (its image mean and std can be off in the 4th digit on large episodes)."""
    if pixels.shape[0] < 2:
        return feature_stats(pixels, count)
    values = np.arange(256, dtype=np.float64)
    counts = np.stack([np.bincount(c, minlength=256) for c in pixels.T]).astype(np.float64)
    present = counts > 0
    low = np.argmax(present, axis=1).astype(np.float32)
    high = (255 - np.argmax(present[:, ::-1], axis=1)).astype(np.float32)
    n = pixels.shape[0]
    mean, mean_sq = counts @ values / n, counts @ values**2 / n
    histograms = []
    for c in range(len(counts)):
        edges = _edges(low[c], high[c])
        hist, _ = np.histogram(values, bins=edges, weights=counts[c])
        histograms.append((np.cumsum(hist), edges))
    stats = {"min": low, "max": high, "mean": mean.astype(np.float32)}
    stats |= {"std": np.sqrt(np.maximum(0, mean_sq - mean**2)).astype(np.float32), "count": np.array([count])}
    return stats | _quantiles(histograms, n)


def image_sample_indices(num_frames: int) -> list[int]:
    """The frames LeRobot samples for an episode's image stats (all of them up to 100)."""
    low = min(num_frames, 100)
    num_samples = max(low, min(int(num_frames**0.75), 10_000))
    return [int(i) for i in np.round(np.linspace(0, num_frames - 1, num_samples)).astype(int)]


def _downsample(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """LeRobot's `auto_downsample_height_width`: big frames are strided to about 150 pixels."""
    height, width = image.shape[:2]
    if max(height, width) < 300:
        return image
    factor = int(width / 150) if width > height else int(height / 150)
    return image[::factor, ::factor]


def image_stats(frames: Sequence[NDArray[np.uint8]]) -> Stats:
    """Per-channel stats of (H, W, 3) uint8 frames, scaled to [0, 1] and shaped (3, 1, 1)."""
    batch = np.stack([_downsample(f) for f in frames])
    stats = _pixel_stats(batch.reshape(-1, batch.shape[-1]), count=len(frames))
    return {k: v if k == "count" else (v.reshape(1, -1, 1, 1) / 255.0)[0] for k, v in stats.items()}


def aggregate_stats(episodes: Sequence[Stats]) -> Stats:
    """LeRobot's `aggregate_feature_stats`: count-weighted mean, pooled variance, and the
    count-weighted mean of the episodes' quantiles, folded one episode at a time as it does."""
    total = episodes[0]
    for ep in episodes[1:]:
        pair = (total, ep)
        means = np.stack([s["mean"] for s in pair])
        variances = np.stack([s["std"] ** 2 for s in pair])
        counts = np.stack([s["count"] for s in pair])
        count = counts.sum(axis=0)
        while counts.ndim < means.ndim:
            counts = np.expand_dims(counts, axis=-1)
        mean = (means * counts).sum(axis=0) / count
        variance = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / count
        total = {
            "min": np.min(np.stack([s["min"] for s in pair]), axis=0),
            "max": np.max(np.stack([s["max"] for s in pair]), axis=0),
            "mean": mean,
            "std": np.sqrt(variance),
            "count": count,
        } | {q: (np.stack([s[q] for s in pair]) * counts).sum(axis=0) / count for q in QUANTILE_KEYS}
    return total
