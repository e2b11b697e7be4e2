"""Export episode bundles as a LeRobot v3.0 dataset directory, and import one back.

Layout written (the one LeRobot v3.0 reads):
  meta/info.json, meta/stats.json, meta/tasks.parquet,
  meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode (lengths, offsets, stats)
  data/chunk-XXX/file-XXX.parquet            frames of many episodes, concatenated
  videos/<key>/chunk-XXX/file-XXX.mp4        per camera, episodes concatenated; an episode's
                                             span is [from_timestamp, to_timestamp) in the file
Stats, dataset-level in meta/stats.json and per episode as `stats/<feature>/<stat>` columns, are
computed as LeRobot's writer computes them, for every feature (images per channel on [0, 1]).
Each episode row also carries `wamfleet/manifest` (robot, episode id, outcome, source) so a
round trip keeps an episode's identity; datasets from elsewhere import without it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import av.container
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from wamfleet.fleet_agent.episode_io import EpisodeReader, EpisodeWriter, VideoEncoder
from wamfleet.platform.contracts.embodiment import CameraSpec, EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, Outcome

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


@dataclass
class _FileCursor:
    """Rolls data or video files over by size, with LeRobot's chunk/file numbering."""

    max_bytes: float
    chunk_index: int = 0
    file_index: int = 0

    def path(self, template: str, **extra: str) -> str:
        return template.format(chunk_index=self.chunk_index, file_index=self.file_index, **extra)

    def advance(self) -> None:
        self.file_index += 1
        if self.file_index >= CHUNKS_SIZE:
            self.chunk_index += 1
            self.file_index = 0


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


def _listed(stats: Stats) -> dict[str, Any]:
    return {k: v.tolist() for k, v in stats.items()}


def _features(spec: EmbodimentSpec, has_actions: bool, extra: dict[str, str]) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for cam in spec.cameras:
        features[image_key(cam.name)] = {
            "dtype": "video",
            "shape": [cam.height, cam.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": cam.height,
                "video.width": cam.width,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "is_depth_map": False,  # where LeRobot 0.6 looks; older releases read video.is_depth_map
                "video.is_depth_map": False,
                "video.fps": spec.fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    features["observation.state"] = {
        "dtype": "float32",
        "shape": [spec.state_dim],
        "names": spec.state_names,
    }
    if has_actions:
        features["action"] = {
            "dtype": "float32",
            "shape": [spec.action_dim],
            "names": spec.action_names,
        }
    for name, dtype in extra.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    for name in ("timestamp",):
        features[name] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _embodiment_of(reader: EpisodeReader) -> tuple[str, tuple[Any, ...]]:
    m = reader.manifest
    return m.embodiment.name, (
        m.fps,
        tuple(m.cameras),
        tuple(m.state_names),
        tuple(m.action_names),
        m.has_actions,
    )


def _check_one_embodiment(readers: Sequence[EpisodeReader], embodiment: EmbodimentSpec) -> None:
    first = readers[0].manifest
    signature = _embodiment_of(readers[0])
    for reader in readers[1:]:
        if _embodiment_of(reader) != signature:
            raise ValueError(
                f"episode {reader.manifest.episode_id}: cameras, fps, features or has_actions differ from "
                f"episode {first.episode_id}; a LeRobot dataset holds one embodiment"
            )
    if signature[0] != embodiment.name:
        raise ValueError(f"embodiment: episodes are {signature[0]!r}, spec is {embodiment.name!r}")


def _extra_features(tables: Sequence[pa.Table]) -> dict[str, str]:
    """The per-frame scalars exported besides the vectors: reward and success where every frame of
    every episode has one, and intervention always."""
    extra: dict[str, str] = {}
    if all(t.column("next.reward").null_count == 0 for t in tables):
        extra["next.reward"] = "float32"
    if all(t.column("next.success").null_count == 0 for t in tables):
        extra["next.success"] = "bool"
    extra["intervention"] = "bool"
    return extra


def _frame_table(
    reader: EpisodeReader, extra: dict[str, str], *, episode_index: int, task_index: int, start: int
) -> pa.Table:
    """An episode's rows of data/*.parquet, columns in the order of info.json's features."""
    table, n, fps = reader.table, reader.num_frames, reader.manifest.fps
    columns: dict[str, Any] = {"observation.state": table.column("observation.state")}
    if reader.manifest.has_actions:
        columns["action"] = table.column("action")
    columns |= {name: table.column(name) for name in extra}
    columns |= {
        "timestamp": pa.array(np.arange(n, dtype=np.float32) / np.float32(fps), pa.float32()),
        "frame_index": pa.array(np.arange(n), pa.int64()),
        "episode_index": pa.array(np.full(n, episode_index), pa.int64()),
        "index": pa.array(np.arange(start, start + n), pa.int64()),
        "task_index": pa.array(np.full(n, task_index), pa.int64()),
    }
    return pa.table(columns)


def _frame_stats(reader: EpisodeReader, frames: pa.Table) -> dict[str, Stats]:
    """Stats of every non-image feature of an episode, as LeRobot computes them."""
    n = frames.num_rows
    stats = {"observation.state": feature_stats(reader.states())}
    actions = reader.actions()
    if actions is not None:
        stats["action"] = feature_stats(actions)
    for name in frames.column_names:
        if name in stats:
            continue
        values = frames.column(name).to_numpy().reshape(n, 1)
        if name == "timestamp":  # LeRobot's stats see frame_index / fps in float64
            values = np.arange(n, dtype=np.float64).reshape(n, 1) / reader.manifest.fps
        stats[name] = feature_stats(values)
    return stats


def _stats_columns(stats: dict[str, Stats]) -> dict[str, Any]:
    """An episode's `stats/<feature>/<stat>` columns of meta/episodes."""
    return {f"stats/{feature}/{k}": v for feature, fs in stats.items() for k, v in _listed(fs).items()}


class _DatasetWriter:
    """Writes episodes into data/ and videos/, rolling files over by size, and keeps the
    meta/episodes rows and per-episode stats until `finish` writes meta/."""

    def __init__(self, out_dir: Path, extra: dict[str, str], *, data_mb: float, video_mb: float, crf: int):
        self.out_dir = out_dir
        self.extra = extra
        self.data_mb, self.video_mb, self.crf = data_mb, video_mb, crf
        self.data_cursor = _FileCursor(data_mb * 1024 * 1024)
        self.video_cursors: dict[str, _FileCursor] = {}
        self.data_writer: pq.ParquetWriter | None = None
        self.data_bytes = 0
        self.encoders: dict[str, VideoEncoder] = {}
        self.tasks: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, Stats]] = []
        self.frames = 0

    def add(self, reader: EpisodeReader) -> None:
        """One episode: its frames, its videos, its meta/episodes row with its stats."""
        m = reader.manifest
        n, episode_index = m.num_frames, len(self.rows)
        frames = _frame_table(
            reader,
            self.extra,
            episode_index=episode_index,
            task_index=self.tasks.setdefault(m.task, len(self.tasks)),
            start=self.frames,
        )
        row: dict[str, Any] = {"episode_index": episode_index, "tasks": [m.task], "length": n}
        row |= self._write_data(frames)
        row |= {"dataset_from_index": self.frames, "dataset_to_index": self.frames + n}
        stats: dict[str, Stats] = {}
        for cam in m.cameras:
            columns, stats[image_key(cam.name)] = self._write_video(reader, cam)
            row |= columns
        stats |= _frame_stats(reader, frames)
        row |= _stats_columns(stats)
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        row[MANIFEST_COLUMN] = m.model_dump_json(exclude={"files"})
        self.rows.append(row)
        self.episode_stats.append(stats)
        self.frames += n

    def _write_data(self, frames: pa.Table) -> dict[str, int]:
        """Appends the frames to the current data file; returns where they went."""
        where = {
            "data/chunk_index": self.data_cursor.chunk_index,
            "data/file_index": self.data_cursor.file_index,
        }
        if self.data_writer is None:
            path = self.out_dir / self.data_cursor.path(DATA_PATH)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(path, frames.schema)
        self.data_writer.write_table(frames)
        self.data_bytes += frames.nbytes
        if self.data_bytes >= self.data_cursor.max_bytes:
            self.data_writer.close()
            self.data_writer = None
            self.data_bytes = 0
            self.data_cursor.advance()
        return where

    def _write_video(self, reader: EpisodeReader, cam: CameraSpec) -> tuple[dict[str, Any], Stats]:
        """Appends one camera's frames to its video file; returns the episode's span in it and
        the image stats of the frames LeRobot would sample."""
        key, fps = image_key(cam.name), reader.manifest.fps
        cursor = self.video_cursors.setdefault(cam.name, _FileCursor(self.video_mb * 1024 * 1024))
        encoder = self.encoders.get(cam.name)
        if encoder is None:
            path = self.out_dir / cursor.path(VIDEO_PATH, video_key=key)
            path.parent.mkdir(parents=True, exist_ok=True)
            encoder = VideoEncoder(path, cam.width, cam.height, fps, crf=self.crf, zerolatency=True)
            self.encoders[cam.name] = encoder
        start = encoder.frames
        sampled = set(image_sample_indices(reader.num_frames))
        samples = []
        for i, images in enumerate(reader.iter_frames([cam.name])):
            encoder.add(images[cam.name])
            if i in sampled:
                samples.append(images[cam.name])
        columns = {
            f"videos/{key}/chunk_index": cursor.chunk_index,
            f"videos/{key}/file_index": cursor.file_index,
            f"videos/{key}/from_timestamp": start / fps,
            f"videos/{key}/to_timestamp": encoder.frames / fps,
        }
        if encoder.encoded_bytes >= cursor.max_bytes:
            encoder.close()
            del self.encoders[cam.name]
            cursor.advance()
        return columns, image_stats(samples)

    def close(self) -> None:
        if self.data_writer is not None:
            self.data_writer.close()
            self.data_writer = None
        for encoder in self.encoders.values():
            encoder.close()
        self.encoders.clear()

    def finish(self, embodiment: EmbodimentSpec, has_actions: bool) -> dict[str, Any]:
        """Writes meta/: episodes, tasks, stats.json (the episodes' stats aggregated) and info.json."""
        meta = self.out_dir / "meta"
        episodes_path = self.out_dir / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.rows), episodes_path)
        tasks = pd.DataFrame(
            {"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task")
        )
        tasks.to_parquet(meta / "tasks.parquet")
        stats = {
            feature: _listed(aggregate_stats([s[feature] for s in self.episode_stats]))
            for feature in self.episode_stats[0]
        }
        (meta / "stats.json").write_text(json.dumps(stats, indent=2))
        episodes = len(self.rows)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": embodiment.name,
            "total_episodes": episodes,
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": embodiment.fps,
            "splits": {"train": f"0:{episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": _features(embodiment, has_actions, self.extra),
            "wamfleet": {"embodiment": embodiment.model_dump(mode="json")},
        }
        (meta / "info.json").write_text(json.dumps(info, indent=2))
        return info


def export_lerobot(
    bundles: Sequence[Path],
    out_dir: Path,
    embodiment: EmbodimentSpec,
    *,
    data_file_mb: float = 100,
    video_file_mb: float = 500,
    crf: int = 18,
) -> dict[str, Any]:
    """Writes the bundles (all of one embodiment) as a LeRobot v3.0 dataset; returns info.json.

    Every feature gets stats as LeRobot's writer computes them: per episode in meta/episodes'
    `stats/<feature>/<stat>` columns, aggregated over the dataset in meta/stats.json."""
    if not bundles:
        raise ValueError("bundles: nothing to export")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    readers: list[EpisodeReader] = []
    try:
        for bundle in bundles:
            readers.append(EpisodeReader(Path(bundle)))
        _check_one_embodiment(readers, embodiment)
        extra = _extra_features([r.table for r in readers])
        writer = _DatasetWriter(out_dir, extra, data_mb=data_file_mb, video_mb=video_file_mb, crf=crf)
        try:
            for reader in readers:
                writer.add(reader)
        finally:
            writer.close()
    finally:
        for reader in readers:
            reader.close()
    return writer.finish(embodiment, readers[0].manifest.has_actions)


# Import ---------------------------------------------------------------------------------


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return slug[:63] or "lerobot"


def _read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LeRobotFormatError(f"{path}: missing; not a LeRobot dataset directory") from None
    except json.JSONDecodeError as exc:
        raise LeRobotFormatError(f"{path}: not valid JSON ({exc})") from None
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise LeRobotFormatError(
            f"meta/info.json: codebase_version is {info.get('codebase_version')!r}, "
            f"only {CODEBASE_VERSION} is read"
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise LeRobotFormatError(f"meta/info.json: missing {key!r}")
    return info


def embodiment_from_info(info: dict[str, Any], name: str | None = None) -> EmbodimentSpec:
    """The embodiment a LeRobot dataset describes (wamfleet's own, when it wrote the dataset)."""
    if "wamfleet" in info and name is None:
        return EmbodimentSpec.model_validate(info["wamfleet"]["embodiment"])
    features: dict[str, Any] = info["features"]
    cameras = []
    for key, feat in features.items():
        if feat.get("dtype") == "video" and key.startswith(IMAGE_KEY_PREFIX):
            height, width = feat["shape"][0], feat["shape"][1]
            cameras.append(
                CameraSpec(
                    name=_slug(key.removeprefix(IMAGE_KEY_PREFIX)),
                    height=height,
                    width=width,
                )
            )
    if not cameras:
        raise LeRobotFormatError("meta/info.json: no video features under observation.images.*")

    def names(key: str) -> list[str]:
        feat = features.get(key)
        if feat is None:
            return []
        listed = feat.get("names")
        dim = int(feat["shape"][0])
        if isinstance(listed, dict):  # older layouts: {"motors": [...]}
            listed = next(iter(listed.values()), None)
        if isinstance(listed, list) and len(listed) == dim:
            return [str(n) for n in listed]
        return [f"{key}_{i}" for i in range(dim)]

    if "observation.state" not in features:
        raise LeRobotFormatError("meta/info.json: no observation.state feature")
    return EmbodimentSpec(
        name=_slug(name or info.get("robot_type") or "lerobot"),
        cameras=cameras,
        fps=float(info["fps"]),
        state_names=names("observation.state"),
        action_names=names("action"),
    )


def _task_names(root: Path) -> dict[int, str]:
    """task_index -> instruction, from meta/tasks.parquet (the task strings are its index)."""
    path = root / "meta" / "tasks.parquet"
    if not path.exists():
        return {}
    tasks = pd.read_parquet(path)
    return {int(i): str(task) for task, i in zip(tasks.index, tasks["task_index"], strict=True)}


def _first_task(frames: pa.Table, row: dict[str, Any], names: dict[int, str]) -> str:
    """An episode's `tasks` is an unordered set in LeRobot: name the task of its first frame."""
    if "task_index" in frames.column_names and frames.num_rows:
        name = names.get(int(frames.column("task_index")[0].as_py()))
        if name is not None:
            return name
    return str(row["tasks"][0])


def _outcome_from_frames(extras: dict[str, list[Any]]) -> Outcome:
    """A dataset from elsewhere has no manifest: success if any frame has next.success, and one
    intervention per run of frames flagged `intervention`."""
    successes = [bool(v) for v in extras.get("next.success", []) if v is not None]
    flags = [bool(v) for v in extras.get("intervention", [])]
    runs = sum(1 for i, flag in enumerate(flags) if flag and (i == 0 or not flags[i - 1]))
    return Outcome(success=any(successes) if successes else None, interventions=runs)


def _episode_rows(root: Path) -> list[dict[str, Any]]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotFormatError("meta/episodes/: no episode metadata files")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(pq.read_table(f).to_pylist())
    return sorted(rows, key=lambda r: r["episode_index"])


def _segment(path: Path, start_s: float, count: int, fps: float) -> Iterator[NDArray[np.uint8]]:
    """`count` frames starting at `start_s` seconds in a concatenated LeRobot video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
        first = round(start_s * fps)
        produced = 0
        for frame in container.decode(stream):
            assert frame.time is not None
            index = round(frame.time * fps)
            if index < first:
                continue
            yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
            produced += 1
            if produced == count:
                return
    raise LeRobotFormatError(f"{path}: has {produced} frames from {start_s:.3f}s, {count} expected")


@dataclass(frozen=True)
class LeRobotImport:
    embodiment: EmbodimentSpec
    bundles: list[tuple[Path, EpisodeManifest]]


@dataclass
class _Source:
    """A LeRobot dataset being read: its layout, and its data files as they are loaded."""

    root: Path
    info: dict[str, Any]
    spec: EmbodimentSpec
    video_keys: dict[str, str]  # camera name -> feature key
    task_names: dict[int, str]
    data_tables: dict[Path, pa.Table]

    @classmethod
    def open(cls, root: Path, embodiment_name: str | None) -> _Source:
        info = _read_info(root)
        spec = embodiment_from_info(info, embodiment_name)
        video_keys = {
            _slug(k.removeprefix(IMAGE_KEY_PREFIX)): k
            for k, f in info["features"].items()
            if f.get("dtype") == "video" and k.startswith(IMAGE_KEY_PREFIX)
        }
        missing = [c.name for c in spec.cameras if c.name not in video_keys]
        if missing:
            raise LeRobotFormatError(f"meta/info.json: no video feature for cameras {missing}")
        return cls(root, info, spec, video_keys, _task_names(root), {})

    @property
    def has_actions(self) -> bool:
        return "action" in self.info["features"] and self.spec.action_dim > 0

    def frames(self, row: dict[str, Any]) -> pa.Table:
        """An episode's data rows, in frame order."""
        data_file = self.root / self.info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        if data_file not in self.data_tables:
            try:
                self.data_tables[data_file] = pq.read_table(data_file)
            except FileNotFoundError:
                raise LeRobotFormatError(f"{data_file.relative_to(self.root)}: missing") from None
        table = self.data_tables[data_file]
        frames = table.filter(pc.equal(table.column("episode_index"), row["episode_index"]))
        frames = frames.sort_by("frame_index")
        if frames.num_rows != row["length"]:
            raise LeRobotFormatError(
                f"episode {row['episode_index']}: {frames.num_rows} data rows, length says {row['length']}"
            )
        return frames

    def images(self, row: dict[str, Any], count: int) -> Iterator[dict[str, NDArray[np.uint8]]]:
        """The episode's frames, one image per camera at a time; a missing video file is named
        at once, before any frame is read."""
        video_path = self.info.get("video_path", VIDEO_PATH)
        streams = {}
        for cam in self.spec.cameras:
            key = self.video_keys[cam.name]
            path = self.root / video_path.format(
                video_key=key,
                chunk_index=row[f"videos/{key}/chunk_index"],
                file_index=row[f"videos/{key}/file_index"],
            )
            if not path.exists():
                raise LeRobotFormatError(f"{path.relative_to(self.root)}: missing")
            streams[cam.name] = _segment(
                path, float(row[f"videos/{key}/from_timestamp"]), count, self.spec.fps
            )
        return (dict(zip(streams, images, strict=True)) for images in zip(*streams.values(), strict=True))

    def import_episode(
        self, row: dict[str, Any], out_dir: Path, robot_id: str
    ) -> tuple[Path, EpisodeManifest]:
        frames = self.frames(row)
        n = frames.num_rows
        original: dict[str, Any] = json.loads(row[MANIFEST_COLUMN]) if row.get(MANIFEST_COLUMN) else {}
        states = np.asarray(frames.column("observation.state").to_pylist(), dtype=np.float32).reshape(n, -1)
        actions = None
        if self.has_actions:
            actions = np.asarray(frames.column("action").to_pylist(), dtype=np.float32).reshape(n, -1)
        extras = {
            c: frames.column(c).to_pylist()
            for c in ("next.reward", "next.success", "intervention")
            if c in frames.column_names
        }
        images = self.images(row, n)  # checks the video files before a bundle is begun
        episode_id = original.get("episode_id")
        out = out_dir / str(episode_id or f"episode-{row['episode_index']:06d}")
        writer = EpisodeWriter(
            out,
            robot_id=original.get("robot_id", robot_id),
            embodiment=self.spec,
            task=original.get("task") or _first_task(frames, row, self.task_names),
            episode_id=None if episode_id is None else uuid.UUID(episode_id),
            video_only=not self.has_actions,
            source=EpisodeSource(original.get("source", EpisodeSource.imported)),
            policy_version=original.get("policy_version"),
            site=original.get("site"),
            tags=original.get("tags"),
            started_at=datetime.fromisoformat(original["started_at"]) if "started_at" in original else None,
        )
        with writer:
            for i, cameras in enumerate(images):
                writer.add_frame(
                    cameras,
                    states[i],
                    None if actions is None else actions[i],
                    reward=extras["next.reward"][i] if "next.reward" in extras else None,
                    success=extras["next.success"][i] if "next.success" in extras else None,
                    intervention=bool(extras["intervention"][i]) if "intervention" in extras else False,
                )
            if "outcome" in original:
                outcome = Outcome.model_validate(original["outcome"])
            else:
                outcome = _outcome_from_frames(extras)
            return out, writer.close(outcome)


def import_lerobot(
    root: Path,
    out_dir: Path,
    *,
    robot_id: str = "lerobot-import",
    embodiment_name: str | None = None,
) -> LeRobotImport:
    """Writes every episode of a LeRobot v3.0 dataset as a bundle directory under `out_dir`.

    A dataset from elsewhere (no `wamfleet/manifest` column) gets `robot_id`, its first frame's
    task, and an outcome read from its frames (`next.success`, runs of `intervention`)."""
    source = _Source.open(Path(root), embodiment_name)
    bundles = [source.import_episode(row, Path(out_dir), robot_id) for row in _episode_rows(source.root)]
    return LeRobotImport(source.spec, bundles)
