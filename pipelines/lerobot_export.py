"""Export episode bundles as a LeRobot v3.0 dataset directory (the layout: lerobot_v3.py).

Frames of many episodes go into rolling data and video files; each episode gets its
meta/episodes row with its stats and its manifest, and meta/ is written last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import VideoEncoder
from wamfleet.pipelines.lerobot_v3 import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    MANIFEST_COLUMN,
    VIDEO_PATH,
    Stats,
    aggregate_stats,
    feature_stats,
    image_key,
    image_sample_indices,
    image_stats,
)
from wamfleet.platform.contracts.embodiment import CameraSpec, EmbodimentSpec


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
