"""Episode bundles on disk: the streaming writer robots record with and the verifying reader.

A bundle directory holds `data.parquet` (one row per frame, LeRobot column names),
`videos/<camera>.mp4` (H.264, short GOP, no B-frames, so any frame is a cheap seek away) and
`manifest.json`, written last with every other file's size and sha256: a directory without a
manifest is an unfinished recording, never an episode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
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

Image = NDArray[np.uint8]


class BundleError(Exception):
    """A bundle on disk is missing, truncated, altered or malformed; names the file."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _vector_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim) if dim > 0 else pa.list_(pa.float32())


def frame_schema(state_dim: int, action_dim: int) -> pa.Schema:
    """The data.parquet schema; column names follow LeRobot."""
    return pa.schema(
        [
            pa.field("frame_index", pa.int64(), nullable=False),
            pa.field("timestamp", pa.float32(), nullable=False),
            pa.field("observation.state", _vector_type(state_dim), nullable=False),
            pa.field("action", _vector_type(action_dim), nullable=True),
            pa.field("next.reward", pa.float32(), nullable=True),
            pa.field("next.success", pa.bool_(), nullable=True),
            pa.field("intervention", pa.bool_(), nullable=False),
        ]
    )


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


def write_manifest(directory: Path, manifest: EpisodeManifest) -> None:
    tmp = directory / f".{MANIFEST_FILE}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(manifest.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_FILE)


def load_manifest(directory: Path) -> EpisodeManifest:
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise BundleError(
            MANIFEST_FILE, f"missing in {directory} (an unfinished or absent episode)"
        ) from None
    try:
        return EpisodeManifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise BundleError(MANIFEST_FILE, f"not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise BundleError(MANIFEST_FILE, describe_validation_error(exc)) from None


def verify_files(directory: Path, manifest: EpisodeManifest) -> None:
    """Checks every listed file's presence, size and sha256; raises naming the first bad one."""
    for entry in manifest.files:
        path = Path(directory) / entry.path
        if not path.is_file():
            raise BundleError(entry.path, "missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(
                entry.path,
                f"size {size} bytes, manifest says {entry.size} (truncated or altered)",
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(
                entry.path,
                f"sha256 {digest} does not match the manifest ({entry.sha256})",
            )


class _CameraDecoder:
    """Random access into one camera's mp4 by frame index."""

    def __init__(self, directory: Path, camera: str, fps: float, num_frames: int) -> None:
        self.name = video_file(camera)
        self.path = directory / self.name
        self.fps = fps
        self.num_frames = num_frames
        self._container: av.container.InputContainer | None = None

    def _open(self) -> av.container.InputContainer:
        if self._container is None:
            try:
                self._container = av.open(str(self.path), mode="r")
            except av.FFmpegError as exc:
                raise BundleError(self.name, f"cannot open video ({exc})") from None
            if not self._container.streams.video:
                raise BundleError(self.name, "has no video stream")
        return self._container

    def _index(self, frame: av.VideoFrame) -> int:
        assert frame.time is not None
        return round(frame.time * self.fps)

    def decode(self, start: int, stop: int) -> Iterator[Image]:
        container = self._open()
        stream = container.streams.video[0]
        expect = start
        try:
            if start > 0:
                assert stream.time_base is not None
                container.seek(
                    int(start / self.fps / stream.time_base),
                    stream=stream,
                    backward=True,
                )
            else:
                container.seek(0, stream=stream, backward=True)
            for frame in container.decode(stream):
                idx = self._index(frame)
                if idx < expect:
                    continue
                if idx > expect:
                    raise BundleError(self.name, f"frame {expect} is missing (next decoded is {idx})")
                yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
                expect += 1
                if expect >= stop:
                    return
        except av.FFmpegError as exc:
            raise BundleError(self.name, f"cannot decode frame {expect} ({exc})") from None
        if expect < stop:
            raise BundleError(self.name, f"has only {expect} frames, {stop} expected (truncated?)")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class EpisodeReader:
    """Reads a finished bundle; by default verifies every file against the manifest first."""

    def __init__(self, directory: Path, *, verify: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        if verify:
            verify_files(self.directory, self.manifest)
        self._table: pa.Table | None = None
        self._decoders = {
            cam.name: _CameraDecoder(self.directory, cam.name, self.manifest.fps, self.manifest.num_frames)
            for cam in self.manifest.cameras
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for decoder in self._decoders.values():
            decoder.close()

    @property
    def num_frames(self) -> int:
        return self.manifest.num_frames

    @property
    def cameras(self) -> list[str]:
        return [c.name for c in self.manifest.cameras]

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            try:
                table = pq.read_table(self.directory / DATA_FILE)
            except (OSError, pa.ArrowInvalid) as exc:
                raise BundleError(DATA_FILE, f"not a readable parquet file ({exc})") from None
            missing = set(frame_schema(0, 0).names) - set(table.column_names)
            if missing:
                raise BundleError(DATA_FILE, f"missing columns {sorted(missing)}")
            if table.num_rows != self.num_frames:
                raise BundleError(
                    DATA_FILE,
                    f"{table.num_rows} rows, manifest says {self.num_frames} frames",
                )
            if table.column("frame_index").to_pylist() != list(range(self.num_frames)):
                raise BundleError(DATA_FILE, "frame_index is not 0..num_frames-1 in order")
            self._table = table
        return self._table

    def _vectors(self, column: str, dim: int) -> NDArray[np.float32]:
        values = self.table.column(column).combine_chunks()
        flat = np.asarray(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        return flat.reshape(self.num_frames, dim)

    def states(self) -> NDArray[np.float32]:
        return self._vectors("observation.state", len(self.manifest.state_names))

    def actions(self) -> NDArray[np.float32] | None:
        if not self.manifest.has_actions:
            return None
        if self.table.column("action").null_count:
            raise BundleError(DATA_FILE, "action has nulls in an episode that declares has_actions")
        return self._vectors("action", len(self.manifest.action_names))

    def interventions(self) -> NDArray[np.bool_]:
        """Per frame: True where a person, not the policy, chose the action."""
        return np.asarray(self.table.column("intervention").to_numpy(zero_copy_only=False), dtype=bool)

    def timestamps(self) -> NDArray[np.float32]:
        return np.asarray(self.table.column("timestamp").to_numpy(), dtype=np.float32)

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= self.num_frames:
            raise IndexError(f"frame range [{start}, {stop}) outside [0, {self.num_frames})")

    def frames(self, start: int, stop: int, cameras: Sequence[str] | None = None) -> dict[str, Image]:
        """Frames [start, stop) per camera as uint8 arrays shaped (n, H, W, 3)."""
        self._check_range(start, stop)
        names = list(cameras) if cameras is not None else self.cameras
        out = {}
        for name in names:
            if name not in self._decoders:
                raise KeyError(f"episode has no camera {name!r}")
            out[name] = np.stack(list(self._decoders[name].decode(start, stop)))
        return out

    def frame(self, index: int) -> dict[str, Image]:
        return {name: frames[0] for name, frames in self.frames(index, index + 1).items()}

    def iter_frames(self, cameras: Sequence[str] | None = None) -> Iterator[dict[str, Image]]:
        """Every frame in order, decoding each video once, holding one frame per camera."""
        names = list(cameras) if cameras is not None else self.cameras
        iters = [self._decoders[n].decode(0, self.num_frames) for n in names]
        for images in zip(*iters, strict=True):
            yield dict(zip(names, images, strict=True))
