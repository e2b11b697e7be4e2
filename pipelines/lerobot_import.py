"""Import a LeRobot v3.0 dataset directory (the layout: lerobot_v3.py) as episode bundles.

Episodes wamfleet exported keep their identity from their `wamfleet/manifest` column; datasets
from elsewhere get a robot id, their first frame's task and an outcome read from their frames.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
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

from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.pipelines.lerobot_v3 import (
    CODEBASE_VERSION,
    IMAGE_KEY_PREFIX,
    MANIFEST_COLUMN,
    VIDEO_PATH,
    LeRobotFormatError,
)
from wamfleet.platform.contracts.embodiment import CameraSpec, EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, Outcome


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
