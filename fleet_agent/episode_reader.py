"""Reading a finished episode bundle: verified against its manifest, frames decoded on demand.

Pipelines, the CLI and the MCAP export read bundles here; a missing, truncated or altered file
raises `BundleError` naming it, before any of its data is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

import av
import av.container
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from wamfleet.fleet_agent.episode_format import BundleError, Image, frame_schema, load_manifest
from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.episode import DATA_FILE, EpisodeManifest, video_file


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
