"""Export episode bundles as a LeRobot v3.0 dataset directory, and import one back.

Layout written (the one LeRobot v3.0 reads):
  meta/info.json, meta/stats.json, meta/tasks.parquet,
  meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode (lengths, offsets, stats)
  data/chunk-XXX/file-XXX.parquet            frames of many episodes, concatenated
  videos/<key>/chunk-XXX/file-XXX.mp4        per camera, episodes concatenated; an episode's
                                             span is [from_timestamp, to_timestamp) in the file
Each episode row also carries `wamfleet/manifest` (robot, episode id, outcome, source) so a
round trip keeps an episode's identity; datasets from elsewhere import without it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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


@dataclass
class _VectorStats:
    """Running min/max/mean/std plus exact q01/q99 over the (small) vectors of a dataset."""

    values: list[NDArray[np.float32]] = field(default_factory=list)

    def add(self, x: NDArray[np.float32]) -> None:
        self.values.append(x)

    def summary(self) -> dict[str, Any]:
        return vector_stats(np.concatenate(self.values))


def vector_stats(x: NDArray[np.float32]) -> dict[str, Any]:
    x64 = x.astype(np.float64)
    return {
        "min": x64.min(0).tolist(),
        "max": x64.max(0).tolist(),
        "mean": x64.mean(0).tolist(),
        "std": x64.std(0).tolist(),
        "count": [int(x.shape[0])],
        "q01": np.quantile(x64, 0.01, axis=0).tolist(),
        "q99": np.quantile(x64, 0.99, axis=0).tolist(),
    }


@dataclass
class _ImageStats:
    """Per-channel statistics on [0, 1] pixels, shaped (3, 1, 1) as LeRobot stores them."""

    total: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    total_sq: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    low: NDArray[np.float64] = field(default_factory=lambda: np.full(3, np.inf))
    high: NDArray[np.float64] = field(default_factory=lambda: np.full(3, -np.inf))
    pixels: int = 0
    frames: int = 0

    def add(self, image: NDArray[np.uint8]) -> None:
        px = image.reshape(-1, 3).astype(np.float64) / 255.0
        self.total += px.sum(0)
        self.total_sq += (px * px).sum(0)
        self.low = np.minimum(self.low, px.min(0))
        self.high = np.maximum(self.high, px.max(0))
        self.pixels += px.shape[0]
        self.frames += 1

    def summary(self) -> dict[str, Any]:
        mean = self.total / self.pixels
        std = np.sqrt(np.maximum(self.total_sq / self.pixels - mean**2, 0.0))

        def shaped(v: NDArray[np.float64]) -> list[list[list[float]]]:
            return [[[float(c)]] for c in v]

        return {
            "min": shaped(self.low),
            "max": shaped(self.high),
            "mean": shaped(mean),
            "std": shaped(std),
            "count": [self.frames],
        }


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


def export_lerobot(
    bundles: Sequence[Path],
    out_dir: Path,
    embodiment: EmbodimentSpec,
    *,
    data_file_mb: float = 100,
    video_file_mb: float = 500,
    crf: int = 18,
) -> dict[str, Any]:
    """Writes the bundles (all of one embodiment) as a LeRobot v3.0 dataset; returns info.json."""
    if not bundles:
        raise ValueError("bundles: nothing to export")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    readers = [EpisodeReader(Path(b)) for b in bundles]
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
    has_actions = first.has_actions
    tables = [r.table for r in readers]
    extra: dict[str, str] = {"intervention": "bool"}
    if all(t.column("next.reward").null_count == 0 for t in tables):
        extra["next.reward"] = "float32"
    if all(t.column("next.success").null_count == 0 for t in tables):
        extra["next.success"] = "bool"

    tasks: dict[str, int] = {}
    data_cursor = _FileCursor(data_file_mb * 1024 * 1024)
    video_cursors = {c.name: _FileCursor(video_file_mb * 1024 * 1024) for c in first.cameras}
    data_writer: pq.ParquetWriter | None = None
    data_bytes = 0
    video_outs: dict[str, VideoEncoder] = {}
    state_stats, action_stats = _VectorStats(), _VectorStats()
    image_stats = {c.name: _ImageStats() for c in first.cameras}
    episode_rows: list[dict[str, Any]] = []
    global_index = 0

    try:
        for ep_index, (reader, table) in enumerate(zip(readers, tables, strict=True)):
            m = reader.manifest
            task_index = tasks.setdefault(m.task, len(tasks))
            n = m.num_frames
            row: dict[str, Any] = {
                "episode_index": ep_index,
                "tasks": [m.task],
                "length": n,
                "data/chunk_index": data_cursor.chunk_index,
                "data/file_index": data_cursor.file_index,
                "dataset_from_index": global_index,
                "dataset_to_index": global_index + n,
            }
            columns: dict[str, Any] = {
                "observation.state": table.column("observation.state"),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / np.float32(m.fps), pa.float32()),
                "frame_index": pa.array(np.arange(n), pa.int64()),
                "episode_index": pa.array(np.full(n, ep_index), pa.int64()),
                "index": pa.array(np.arange(global_index, global_index + n), pa.int64()),
                "task_index": pa.array(np.full(n, task_index), pa.int64()),
            }
            if has_actions:
                columns["action"] = table.column("action")
            for name in extra:
                columns[name] = table.column(name)
            frames = pa.table(columns)
            if data_writer is None:
                path = out_dir / data_cursor.path(DATA_PATH)
                path.parent.mkdir(parents=True, exist_ok=True)
                data_writer = pq.ParquetWriter(path, frames.schema)
            data_writer.write_table(frames)
            data_bytes += frames.nbytes
            states = reader.states()
            state_stats.add(states)
            row |= {f"stats/observation.state/{k}": v for k, v in vector_stats(states).items()}
            actions = reader.actions()
            if actions is not None:
                action_stats.add(actions)
                row |= {f"stats/action/{k}": v for k, v in vector_stats(actions).items()}

            for cam in m.cameras:
                key = image_key(cam.name)
                cursor = video_cursors[cam.name]
                if cam.name not in video_outs:
                    path = out_dir / cursor.path(VIDEO_PATH, video_key=key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    video_outs[cam.name] = VideoEncoder(
                        path, cam.width, cam.height, m.fps, crf=crf, zerolatency=True
                    )
                encoder = video_outs[cam.name]
                start = encoder.frames
                for images in reader.iter_frames([cam.name]):
                    encoder.add(images[cam.name])
                    image_stats[cam.name].add(images[cam.name])
                row |= {
                    f"videos/{key}/chunk_index": cursor.chunk_index,
                    f"videos/{key}/file_index": cursor.file_index,
                    f"videos/{key}/from_timestamp": start / m.fps,
                    f"videos/{key}/to_timestamp": encoder.frames / m.fps,
                }
                if encoder.encoded_bytes >= cursor.max_bytes:
                    encoder.close()
                    del video_outs[cam.name]
                    cursor.advance()
            row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            row[MANIFEST_COLUMN] = m.model_dump_json(exclude={"files"})
            episode_rows.append(row)
            global_index += n
            if data_bytes >= data_cursor.max_bytes:
                assert data_writer is not None
                data_writer.close()
                data_writer = None
                data_bytes = 0
                data_cursor.advance()
    finally:
        if data_writer is not None:
            data_writer.close()
        for encoder in video_outs.values():
            encoder.close()
        for reader in readers:
            reader.close()

    meta = out_dir / "meta"
    episodes_path = out_dir / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), episodes_path)
    pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")).to_parquet(
        meta / "tasks.parquet"
    )
    stats: dict[str, Any] = {"observation.state": state_stats.summary()}
    if has_actions:
        stats["action"] = action_stats.summary()
    for camera, istats in image_stats.items():
        stats[image_key(camera)] = istats.summary()
    (meta / "stats.json").write_text(json.dumps(stats, indent=2))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": embodiment.name,
        "total_episodes": len(readers),
        "total_frames": global_index,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": data_file_mb,
        "video_files_size_in_mb": video_file_mb,
        "fps": embodiment.fps,
        "splits": {"train": f"0:{len(readers)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": _features(embodiment, has_actions, extra),
        "wamfleet": {"embodiment": embodiment.model_dump(mode="json")},
    }
    (meta / "info.json").write_text(json.dumps(info, indent=2))
    return info


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


def import_lerobot(
    root: Path,
    out_dir: Path,
    *,
    robot_id: str = "lerobot-import",
    embodiment_name: str | None = None,
) -> LeRobotImport:
    """Writes every episode of a LeRobot v3.0 dataset as a bundle directory under `out_dir`."""
    root = Path(root)
    info = _read_info(root)
    spec = embodiment_from_info(info, embodiment_name)
    features = info["features"]
    has_actions = "action" in features and spec.action_dim > 0
    video_path = info.get("video_path", VIDEO_PATH)
    video_keys = {
        _slug(k.removeprefix(IMAGE_KEY_PREFIX)): k
        for k, f in features.items()
        if f.get("dtype") == "video" and k.startswith(IMAGE_KEY_PREFIX)
    }
    missing = [c.name for c in spec.cameras if c.name not in video_keys]
    if missing:
        raise LeRobotFormatError(f"meta/info.json: no video feature for cameras {missing}")
    data_tables: dict[Path, pa.Table] = {}
    bundles = []
    for row in _episode_rows(root):
        data_file = root / info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        if data_file not in data_tables:
            try:
                data_tables[data_file] = pq.read_table(data_file)
            except FileNotFoundError:
                raise LeRobotFormatError(f"{data_file.relative_to(root)}: missing") from None
        table = data_tables[data_file]
        mask = pc.equal(table.column("episode_index"), row["episode_index"])
        frames = table.filter(mask).sort_by("frame_index")
        n = frames.num_rows
        if n != row["length"]:
            raise LeRobotFormatError(
                f"episode {row['episode_index']}: {n} data rows, length says {row['length']}"
            )
        original: dict[str, Any] = json.loads(row[MANIFEST_COLUMN]) if row.get(MANIFEST_COLUMN) else {}
        states = np.asarray(frames.column("observation.state").to_pylist(), dtype=np.float32).reshape(n, -1)
        actions = (
            np.asarray(frames.column("action").to_pylist(), dtype=np.float32).reshape(n, -1)
            if has_actions
            else None
        )
        extras = {
            c: frames.column(c).to_pylist()
            for c in ("next.reward", "next.success", "intervention")
            if c in frames.column_names
        }
        streams = []
        for cam in spec.cameras:
            cam_key = video_keys[cam.name]
            path = root / video_path.format(
                video_key=cam_key,
                chunk_index=row[f"videos/{cam_key}/chunk_index"],
                file_index=row[f"videos/{cam_key}/file_index"],
            )
            if not path.exists():
                raise LeRobotFormatError(f"{path.relative_to(root)}: missing")
            streams.append(
                (
                    cam.name,
                    _segment(
                        path,
                        float(row[f"videos/{cam_key}/from_timestamp"]),
                        n,
                        spec.fps,
                    ),
                )
            )
        source = EpisodeSource(original.get("source", EpisodeSource.imported))
        episode_id = original.get("episode_id")
        out = Path(out_dir) / str(episode_id or f"episode-{row['episode_index']:06d}")
        writer = EpisodeWriter(
            out,
            robot_id=original.get("robot_id", robot_id),
            embodiment=spec,
            task=original.get("task") or row["tasks"][0],
            episode_id=None if episode_id is None else uuid.UUID(episode_id),
            video_only=not has_actions,
            source=source,
            policy_version=original.get("policy_version"),
            site=original.get("site"),
            tags=original.get("tags"),
            started_at=datetime.fromisoformat(original["started_at"]) if "started_at" in original else None,
        )
        with writer:
            for i, images in enumerate(zip(*(s for _, s in streams), strict=True)):
                writer.add_frame(
                    {name: img for (name, _), img in zip(streams, images, strict=True)},
                    states[i],
                    None if actions is None else actions[i],
                    reward=extras["next.reward"][i] if "next.reward" in extras else None,
                    success=extras["next.success"][i] if "next.success" in extras else None,
                    intervention=bool(extras["intervention"][i]) if "intervention" in extras else False,
                )
            outcome = Outcome.model_validate(original["outcome"]) if "outcome" in original else Outcome()
            bundles.append((out, writer.close(outcome)))
    return LeRobotImport(spec, bundles)
