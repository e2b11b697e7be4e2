"""Recording an episode bundle on a robot: video and rows stream to disk frame by frame.

Nothing of a recording is held in memory beyond one parquet row group, and the manifest (the
commit marker) is written only after every other file is finished and hashed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import av
import av.container
import av.video.stream
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import ArrayLike, NDArray
from pydantic import ValidationError

from wamfleet.fleet_agent.episode_format import Image, frame_schema, write_manifest
from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.episode import (
    DATA_FILE,
    MANIFEST_FILE,
    EpisodeManifest,
    EpisodeSource,
    FileEntry,
    Outcome,
    video_file,
)
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.contracts.ids import new_episode_id

RECORDER = "wamfleet-episode-io/1"
ROW_GROUP_FRAMES = 1024


class VideoEncoder:
    """Encodes one camera's frames to mp4 as they arrive; holds no frames itself."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        *,
        codec: str = "libx264",
        gop: int = 8,
        crf: int = 23,
        preset: str = "veryfast",
        threads: int = 1,
        zerolatency: bool = False,
    ) -> None:
        self.path = path
        self.width = width
        self.height = height
        self.frames = 0
        self.encoded_bytes = 0
        self._container: av.container.OutputContainer = av.open(str(path), mode="w", format="mp4")
        options = {"g": str(gop), "bf": "0"}
        if codec == "libx264":
            options |= {"crf": str(crf), "preset": preset}
            if zerolatency:  # every frame's packet leaves the encoder at once (exact size accounting)
                options["tune"] = "zerolatency"
        rate = Fraction(fps).limit_denominator(1001)
        stream = cast(
            av.video.stream.VideoStream, self._container.add_stream(codec, rate=rate, options=options)
        )
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.thread_count = threads
        self._stream = stream

    def add(self, image: Image) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self.frames
        packets = self._stream.encode(frame)
        self.encoded_bytes += sum(p.size for p in packets)
        self._container.mux(packets)
        self.frames += 1

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is being discarded anyway
            self._container.close()


class EpisodeWriter:
    """Records one episode into `directory`, streaming video and rows to disk frame by frame."""

    def __init__(
        self,
        directory: Path,
        *,
        robot_id: str,
        embodiment: EmbodimentSpec,
        task: str,
        episode_id: uuid.UUID | None = None,
        video_only: bool = False,
        source: EpisodeSource = EpisodeSource.teleop,
        policy_version: str | None = None,
        site: str | None = None,
        tags: Mapping[str, str] | None = None,
        started_at: datetime | None = None,
        crf: int = 23,
        gop: int = 8,
        preset: str = "veryfast",
        threads: int = 1,
    ) -> None:
        self.directory = Path(directory)
        self.embodiment = embodiment
        self.has_actions = not video_only and embodiment.action_dim > 0
        self.episode_id = episode_id or new_episode_id()
        self._meta: dict[str, Any] = {
            "episode_id": self.episode_id,
            "robot_id": robot_id,
            "embodiment": embodiment.ref,
            "task": task,
            "site": site,
            "tags": dict(tags or {}),
            "source": source,
            "policy_version": policy_version,
            "started_at": started_at or datetime.now(UTC),
            "fps": embodiment.fps,
            "cameras": embodiment.cameras,
            "state_names": embodiment.state_names,
            "action_names": embodiment.action_names if self.has_actions else [],
            "has_actions": self.has_actions,
            "recorder": RECORDER,
        }
        self._check_manifest_fields()
        if (self.directory / MANIFEST_FILE).exists():
            raise FileExistsError(f"{self.directory} already holds a finished episode")
        (self.directory / "videos").mkdir(parents=True, exist_ok=True)
        self._schema = frame_schema(embodiment.state_dim, embodiment.action_dim if self.has_actions else 0)
        self._rows: dict[str, list[Any]] = {name: [] for name in self._schema.names}
        self._parquet_tmp = self.directory / f".{DATA_FILE}.partial"
        self._parquet = pq.ParquetWriter(self._parquet_tmp, self._schema, compression="zstd")
        self._encoders = {
            cam.name: VideoEncoder(
                self.directory / video_file(cam.name),
                cam.width,
                cam.height,
                embodiment.fps,
                crf=crf,
                gop=gop,
                preset=preset,
                threads=threads,
            )
            for cam in embodiment.cameras
        }
        self.num_frames = 0
        self._last_timestamp = -1.0
        self._closed = False

    def _check_manifest_fields(self) -> None:
        """Fails at the start of a recording, not at its end, on a bad robot id or task."""
        placeholder = [FileEntry(path=DATA_FILE, size=0, sha256="0" * 64)] + [
            FileEntry(path=video_file(c.name), size=0, sha256="0" * 64) for c in self.embodiment.cameras
        ]
        try:
            EpisodeManifest(**self._meta, num_frames=1, files=placeholder)
        except ValidationError as exc:
            raise ValueError(f"invalid episode: {describe_validation_error(exc, 'manifest')}") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not self._closed:
            self.abort()

    def add_frame(
        self,
        images: Mapping[str, ArrayLike],
        state: ArrayLike,
        action: ArrayLike | None = None,
        *,
        timestamp: float | None = None,
        reward: float | None = None,
        success: bool | None = None,
        intervention: bool = False,
    ) -> int:
        """Appends one frame and returns its index; rejects anything that breaks the contract."""
        if self._closed:
            raise RuntimeError("episode writer is closed")
        spec = self.embodiment
        expected = {c.name for c in spec.cameras}
        if set(images) != expected:
            raise ValueError(f"images: expected cameras {sorted(expected)}, got {sorted(images)}")
        checked: dict[str, Image] = {}
        for cam in spec.cameras:
            img = np.asarray(images[cam.name])
            if img.dtype != np.uint8 or img.shape != (cam.height, cam.width, 3):
                raise ValueError(
                    f"images[{cam.name!r}]: expected uint8 {(cam.height, cam.width, 3)}, "
                    f"got {img.dtype} {img.shape}"
                )
            checked[cam.name] = np.ascontiguousarray(img)
        state_vec = np.asarray(state, dtype=np.float32).reshape(-1)
        if state_vec.shape != (spec.state_dim,):
            raise ValueError(f"state: expected {spec.state_dim} values, got {state_vec.shape[0]}")
        action_vec: NDArray[np.float32] | None = None
        if self.has_actions:
            if action is None:
                raise ValueError("action: required, this episode records actions")
            action_vec = np.asarray(action, dtype=np.float32).reshape(-1)
            if action_vec.shape != (spec.action_dim,):
                raise ValueError(f"action: expected {spec.action_dim} values, got {action_vec.shape[0]}")
        elif action is not None:
            raise ValueError("action: this is a video-only episode, pass action=None")
        ts = self.num_frames / spec.fps if timestamp is None else float(timestamp)
        if not np.isfinite(ts) or ts <= self._last_timestamp:
            raise ValueError(
                f"timestamp: must be finite and increasing, got {ts} after {self._last_timestamp}"
            )

        for name, img in checked.items():
            self._encoders[name].add(img)
        rows = self._rows
        rows["frame_index"].append(self.num_frames)
        rows["timestamp"].append(ts)
        rows["observation.state"].append(state_vec)
        rows["action"].append(action_vec)
        rows["next.reward"].append(reward)
        rows["next.success"].append(success)
        rows["intervention"].append(bool(intervention))
        self._last_timestamp = ts
        self.num_frames += 1
        if len(rows["frame_index"]) >= ROW_GROUP_FRAMES:
            self._flush_rows()
        return self.num_frames - 1

    def _flush_rows(self) -> None:
        if not self._rows["frame_index"]:
            return
        table = pa.Table.from_pydict(self._rows, schema=self._schema)
        self._parquet.write_table(table)
        for values in self._rows.values():
            values.clear()

    def close(
        self,
        outcome: Outcome | None = None,
        *,
        policy_version: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> EpisodeManifest:
        """Finishes the files, then writes the manifest (the commit marker) atomically.

        `tags` adds what is only known at the end (e.g. the policy's latency over the episode)."""
        if self._closed:
            raise RuntimeError("episode writer is closed")
        if self.num_frames == 0:
            self.abort()
            raise ValueError("episode has no frames")
        self._flush_rows()
        self._parquet.close()
        for encoder in self._encoders.values():
            encoder.close()
        os.replace(self._parquet_tmp, self.directory / DATA_FILE)
        files = [DATA_FILE, *(video_file(c.name) for c in self.embodiment.cameras)]
        entries = [
            FileEntry(
                path=p,
                size=(self.directory / p).stat().st_size,
                sha256=sha256_file(self.directory / p),
            )
            for p in files
        ]
        meta = dict(self._meta)
        if policy_version is not None:
            meta["policy_version"] = policy_version
        if tags:
            meta["tags"] = {**(meta.get("tags") or {}), **tags}
        manifest = EpisodeManifest(
            **meta,
            num_frames=self.num_frames,
            outcome=outcome or Outcome(),
            files=entries,
        )
        write_manifest(self.directory, manifest)
        self._closed = True
        return manifest

    def abort(self) -> None:
        """Discards the recording; nothing of it stays on disk."""
        self._closed = True
        with contextlib.suppress(Exception):  # the file is being discarded anyway
            self._parquet.close()
        for encoder in self._encoders.values():
            encoder.abort()
        shutil.rmtree(self.directory, ignore_errors=True)
