"""Per-episode curation analysis: quality filters, idle trimming and a near-duplicate embedding.

A pure function of one local bundle, its snapshot entry and the recipe (no Ray, no store), so
the sequential baseline and every Ray Data task run exactly the same code. Cheap checks on
data.parquet come first; video is decoded (once per camera, streaming, luma only) just for
episodes that passed them. Every rejection names its filter; the thresholds and how they were
chosen against real Meta-World expert episodes are in docs/pipelines.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from wamfleet.fleet_agent.episode_format import BundleError
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.platform.contracts.curation import CurationRecipe, DropReason
from wamfleet.platform.contracts.dataset import SnapshotEpisode
from wamfleet.platform.contracts.episode import DATA_FILE, video_file

FloatArray = NDArray[np.float64]
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
FROZEN_BLOCK = 4  # pixels: codec noise averages out within a block, a moving arm does not
SPIKE_FLOOR = 0.25  # a dimension's spike scale is at least this fraction of the widest dimension's
STATE_WEIGHT = 0.25  # weight of the state trajectory against the video part of the embedding
STATE_SCALE_FLOOR = 0.05  # state dims are scaled by max(own range, this * the widest range)


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: DropReason
    detail: str


class EpisodeAnalysis(BaseModel):
    """One episode's verdict: rejections (empty: it passed), the kept range and its embedding."""

    model_config = ConfigDict(extra="forbid")

    episode_id: str
    num_frames: int = Field(ge=0)
    video_only: bool
    start: int = Field(default=0, ge=0, description="first frame kept after idle trimming")
    stop: int = Field(default=0, ge=0, description="one past the last frame kept")
    rejections: list[Rejection] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    embedding: list[float] = Field(default_factory=list, description="L2-normalised; empty if rejected")

    @property
    def kept(self) -> bool:
        return not self.rejections

    @property
    def frames_kept(self) -> int:
        return self.stop - self.start if self.kept else 0


def analyse_episode(
    directory: Path, episode: SnapshotEpisode, recipe: CurationRecipe, *, verify: bool = True
) -> EpisodeAnalysis:
    """Runs every filter on the bundle in `directory`; `verify`: check every file's sha256 first
    (skip it only for a bundle just downloaded with `download_bundle`, which did)."""
    try:
        return _Analysis(Path(directory), episode, recipe, verify).run()
    except BundleError as exc:
        return EpisodeAnalysis(
            episode_id=episode.episode_id,
            num_frames=episode.num_frames,
            video_only=not episode.has_actions,
            rejections=[Rejection(reason="unreadable", detail=str(exc))],
        )


def _video_frame_count(directory: Path, camera: str) -> int:
    name = video_file(camera)
    try:
        with av.open(str(directory / name), mode="r") as container:
            if not container.streams.video:
                raise BundleError(name, "has no video stream")
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for p in container.demux(stream) if p.size)
    except av.FFmpegError as exc:
        raise BundleError(name, f"cannot open video ({exc})") from None


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def _luma(frame: av.VideoFrame) -> NDArray[np.float32]:
    """Full-range luma (0..255) of a decoded frame: its Y plane when it has one, else from RGB."""
    fmt = frame.format.name
    if fmt not in _PLANAR_8BIT:
        return np.asarray(frame.to_ndarray(format="rgb24").astype(np.float32) @ LUMA)
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    y = rows[:, : plane.width]
    if fmt.startswith("yuvj") or fmt == "gray" or frame.color_range == _FULL_RANGE:
        return np.asarray(y, dtype=np.float32)
    return np.asarray(np.clip((y.astype(np.float32) - 16.0) * (255.0 / 219.0), 0.0, 255.0))


def luma_frames(directory: Path, camera: str, stop: int) -> Iterator[NDArray[np.float32]]:
    """Frames [0, stop) of one camera as luma, decoded in order.

    Curation needs brightness and structure, not colour: reading the Y plane skips the RGB
    conversion, which costs twenty times the decode itself on small frames.
    """
    name = video_file(camera)
    index = 0
    try:
        with av.open(str(directory / name), mode="r") as container:
            for frame in container.decode(container.streams.video[0]):
                if index >= stop:
                    return
                yield _luma(frame)
                index += 1
    except av.FFmpegError as exc:
        raise BundleError(name, f"cannot decode frame {index} ({exc})") from None
    if index < stop:
        raise BundleError(name, f"has only {index} frames, {stop} expected (truncated?)")


def idle_transitions(values: FloatArray, tolerance: float) -> NDArray[np.bool_]:
    """Per transition t -> t+1: every dimension changed by at most `tolerance` x its episode range."""
    if values.shape[0] < 2:
        return np.zeros(0, dtype=bool)
    if values.shape[1] == 0:
        return np.ones(values.shape[0] - 1, dtype=bool)
    span = values.max(axis=0) - values.min(axis=0)
    return np.asarray(np.all(np.abs(np.diff(values, axis=0)) <= tolerance * span, axis=1), dtype=bool)


def idle_range(idle: NDArray[np.bool_], num_frames: int) -> tuple[int, int]:
    """[start, stop) without the idle transitions at both ends (keeps the last still frame of each)."""
    moving = np.flatnonzero(~idle)
    if moving.size == 0:
        return 0, min(1, num_frames)
    return int(moving[0]), int(moving[-1]) + 2


def spike_ratios(actions: FloatArray) -> FloatArray:
    """Per dimension: the largest jump between consecutive actions over its robust scale.

    The scale is the largest of the jumps' MAD (x1.4826), the 5-95% spread of the values (a
    phase switch of a saturated controller is a legitimate jump of about that size), and a
    floor relative to the widest dimension (a gripper held still, then toggled once). A
    single corrupted frame moves none of them.
    """
    if actions.shape[0] < 3 or actions.shape[1] == 0:
        return np.zeros(actions.shape[1])
    jumps = np.diff(actions, axis=0)
    mad = 1.4826 * np.median(np.abs(jumps - np.median(jumps, axis=0)), axis=0)
    spread = np.percentile(actions, 95, axis=0) - np.percentile(actions, 5, axis=0)
    scale = np.maximum(np.maximum(mad, spread), SPIKE_FLOOR * float(spread.max()))
    return np.asarray(np.abs(jumps).max(axis=0) / np.maximum(scale, 1e-9), dtype=np.float64)


def _bins(n: int, size: int) -> NDArray[np.intp]:
    return np.linspace(0, n, size + 1).astype(np.intp)[:-1]


def thumbnail(gray: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """Area-averaged (size, size) thumbnail of a grayscale image of any shape."""
    h, w = gray.shape
    if h < size or w < size:  # upsample first so every bin holds at least one pixel
        gray = np.repeat(np.repeat(gray, -(-size // h), axis=0), -(-size // w), axis=1)
        h, w = gray.shape
    rows = np.add.reduceat(gray, _bins(h, size), axis=0)
    cells = np.add.reduceat(rows, _bins(w, size), axis=1)
    counts = np.outer(np.diff(np.append(_bins(h, size), h)), np.diff(np.append(_bins(w, size), w)))
    return np.asarray(cells / counts, dtype=np.float32)


def block_means(gray: NDArray[np.float32], block: int = FROZEN_BLOCK) -> NDArray[np.float32]:
    h, w = gray.shape
    hb, wb = max(h // block, 1), max(w // block, 1)
    if h < block or w < block:
        return gray
    return np.asarray(gray[: hb * block, : wb * block].reshape(hb, block, wb, block).mean(axis=(1, 3)))


def _unit(v: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def state_trajectory(states: FloatArray, points: int) -> FloatArray:
    """States resampled to `points`, relative to the first, each dim over its (floored) range."""
    n, dims = states.shape
    if dims == 0 or n == 0:
        return np.zeros(0)
    t = np.linspace(0, n - 1, points)
    resampled = np.stack([np.interp(t, np.arange(n), states[:, j]) for j in range(dims)], axis=1)
    span = states.max(axis=0) - states.min(axis=0)
    scale = np.maximum(span, STATE_SCALE_FLOOR * float(span.max()))
    if float(scale.max()) <= 0:
        return np.zeros(points * dims)
    return np.asarray(((resampled - resampled[0]) / np.where(scale > 0, scale, 1.0)).ravel())


class _CameraStats:
    """Streaming per-camera statistics over the kept range."""

    def __init__(self, sample_at: Sequence[int], thumb_size: int) -> None:
        self.sample_at = set(sample_at)
        self.thumb_size = thumb_size
        self.frames = 0
        self.black = 0
        self.thumbs: dict[int, NDArray[np.float32]] = {}
        self.anchor: NDArray[np.float32] | None = None
        self.anchor_index = 0
        self.longest_still_moving = 0  # transitions of the longest still stretch while the state moved

    def add(
        self, index: int, gray: NDArray[np.float32], recipe: CurationRecipe, moved_before: NDArray[np.intp]
    ) -> None:
        self.frames += 1
        if float(gray.mean()) < recipe.black_level:
            self.black += 1
        if index in self.sample_at:
            self.thumbs[index] = thumbnail(gray, self.thumb_size)
        blocks = block_means(gray)
        if self.anchor is None or float(np.abs(blocks - self.anchor).max()) > recipe.frozen_tolerance:
            self.anchor, self.anchor_index = blocks, index
        else:
            moving = int(moved_before[index] - moved_before[self.anchor_index])
            self.longest_still_moving = max(self.longest_still_moving, moving)


class _Analysis:
    def __init__(
        self, directory: Path, episode: SnapshotEpisode, recipe: CurationRecipe, verify: bool
    ) -> None:
        self.directory = directory
        self.verify = verify
        self.episode = episode
        self.recipe = recipe
        self.rejections: list[Rejection] = []
        self.metrics: dict[str, float] = {}

    def reject(self, reason: DropReason, detail: str) -> None:
        self.rejections.append(Rejection(reason=reason, detail=detail))

    def result(self, num_frames: int, video_only: bool, start: int = 0, stop: int = 0) -> EpisodeAnalysis:
        return EpisodeAnalysis(
            episode_id=self.episode.episode_id,
            num_frames=num_frames,
            video_only=video_only,
            start=start,
            stop=stop,
            rejections=self.rejections,
            metrics={k: round(v, 6) for k, v in self.metrics.items()},
        )

    def run(self) -> EpisodeAnalysis:
        episode, recipe = self.episode, self.recipe
        with EpisodeReader(self.directory, verify=self.verify) as reader:
            manifest = reader.manifest
            if str(manifest.episode_id) != episode.episode_id:
                raise ValueError(
                    f"episode {episode.episode_id}: the bundle in {self.directory} holds "
                    f"episode {manifest.episode_id}"
                )
            n = manifest.num_frames
            video_only = not manifest.has_actions
            if not self._counts_match(reader):
                return self.result(n, video_only)
            self._check_timestamps(reader.timestamps().astype(np.float64), manifest.fps)
            states = reader.states().astype(np.float64)
            raw_actions = reader.actions()
            actions = raw_actions.astype(np.float64) if raw_actions is not None else np.zeros((n, 0))
            if self._check_finite(states, actions, manifest.state_names, manifest.action_names):
                self._check_spikes(actions, manifest.action_names)
            if self.rejections:
                return self.result(n, video_only)

            # Idle ends: state and action both barely change. No state and no action: nothing to trim.
            state_idle = idle_transitions(states, recipe.idle_tolerance)
            if states.shape[1] == 0 and actions.shape[1] == 0:
                idle = np.zeros(max(n - 1, 0), dtype=bool)
            else:
                idle = state_idle & idle_transitions(actions, recipe.idle_tolerance)
            start, stop = idle_range(idle, n)
            self.metrics["trimmed_start"] = start
            self.metrics["trimmed_end"] = n - stop
            if stop - start < recipe.min_frames:
                self.reject(
                    "too_short",
                    f"{stop - start} frames after trimming idle frames [0, {start}) and [{stop}, {n}), "
                    f"min_frames {recipe.min_frames}",
                )
                return self.result(n, video_only, start, stop)

            state_moving = ~state_idle if states.shape[1] else np.ones(max(n - 1, 0), dtype=bool)
            moved_before = np.concatenate([[0], np.cumsum(state_moving)]).astype(np.intp)
            sample_at = np.linspace(start, stop - 1, recipe.embedding_frames).round().astype(int).tolist()
            cameras = sorted(reader.cameras)
            stats = {c: _CameraStats(sample_at, recipe.thumbnail_size) for c in cameras}
            for camera in cameras:
                for index, luma in enumerate(luma_frames(self.directory, camera, stop)):
                    if index >= start:
                        stats[camera].add(index, luma, recipe, moved_before)
            self._check_video(stats, manifest.fps)
            if self.rejections:
                return self.result(n, video_only, start, stop)
            analysis = self.result(n, video_only, start, stop)
            analysis.embedding = embedding(
                [np.stack([s.thumbs[i] for i in sample_at]) for s in stats.values()],
                state_trajectory(states[start:stop], recipe.embedding_frames),
            )
            return analysis

    def _counts_match(self, reader: EpisodeReader) -> bool:
        n = reader.num_frames
        counts = {"snapshot": self.episode.num_frames, "manifest": n}
        try:
            counts[DATA_FILE] = pq.ParquetFile(self.directory / DATA_FILE).metadata.num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise BundleError(DATA_FILE, f"not a readable parquet file ({exc})") from None
        for camera in reader.cameras:
            counts[video_file(camera)] = _video_frame_count(self.directory, camera)
        wrong = {k: v for k, v in counts.items() if v != n}
        if wrong:
            listed = ", ".join(f"{k} {v}" for k, v in wrong.items())
            self.reject("frame_count_mismatch", f"manifest says {n} frames; {listed}")
            return False
        return True

    def _check_timestamps(self, timestamps: FloatArray, fps: float) -> None:
        recipe = self.recipe
        if timestamps.size < 2:
            return
        deltas = np.diff(timestamps)
        self.metrics["max_gap_s"] = float(deltas.max())
        backwards = np.flatnonzero(~(deltas > 0))
        if backwards.size:
            k = int(backwards[0])
            self.reject("timestamp_gap", f"timestamps not increasing at frame {k + 1} ({deltas[k]:+.4f} s)")
            return
        worst = int(np.argmax(deltas))
        if deltas[worst] > recipe.max_gap_seconds:
            self.reject(
                "timestamp_gap",
                f"{deltas[worst]:.3f} s between frames {worst} and {worst + 1} "
                f"(max_gap_seconds {recipe.max_gap_seconds})",
            )
        missing = int(np.maximum(np.round(deltas * fps) - 1, 0).sum())
        fraction = missing / (timestamps.size + missing)
        self.metrics["dropped_fraction"] = fraction
        if fraction > recipe.max_dropped_fraction:
            self.reject(
                "dropped_frames",
                f"{missing} frames missing at {fps:g} fps "
                f"({fraction:.1%} > max_dropped_fraction {recipe.max_dropped_fraction:.1%})",
            )

    def _check_finite(
        self, states: FloatArray, actions: FloatArray, state_names: list[str], action_names: list[str]
    ) -> bool:
        ok = True
        for column, values, names in (("state", states, state_names), ("action", actions, action_names)):
            bad = np.argwhere(~np.isfinite(values))
            if bad.size:
                frame, dim = (int(x) for x in bad[0])
                self.reject(
                    "non_finite",
                    f"{column} {names[dim]!r} is {values[frame, dim]} at frame {frame} "
                    f"({len(bad)} non-finite values)",
                )
                ok = False
        return ok

    def _check_spikes(self, actions: FloatArray, names: list[str]) -> None:
        if actions.shape[1] == 0:
            return
        ratios = spike_ratios(actions)
        dim = int(np.argmax(ratios))
        self.metrics["spike_ratio"] = float(ratios[dim])
        if ratios[dim] > self.recipe.spike_factor:
            frame = int(np.argmax(np.abs(np.diff(actions[:, dim])))) + 1
            self.reject(
                "action_spike",
                f"action {names[dim]!r} jumps by {actions[frame, dim] - actions[frame - 1, dim]:+.4g} "
                f"at frame {frame}, {ratios[dim]:.1f}x its robust scale "
                f"(spike_factor {self.recipe.spike_factor:g})",
            )

    def _check_video(self, stats: dict[str, _CameraStats], fps: float) -> None:
        recipe = self.recipe
        black = {c: s.black / max(s.frames, 1) for c, s in stats.items()}
        still = {c: s.longest_still_moving / fps for c, s in stats.items()}
        self.metrics["black_fraction"] = max(black.values(), default=0.0)
        self.metrics["frozen_seconds"] = max(still.values(), default=0.0)
        dark = [f"camera {c!r}: {f:.1%} of frames" for c, f in black.items() if f > recipe.max_black_fraction]
        if dark:
            self.reject(
                "black_frames",
                f"{'; '.join(dark)} darker than luma {recipe.black_level:g} "
                f"(max_black_fraction {recipe.max_black_fraction:.1%})",
            )
        frozen = [
            f"camera {c!r}: picture still for {s:.2f} s"
            for c, s in still.items()
            if s > recipe.max_frozen_seconds
        ]
        if frozen:
            self.reject(
                "frozen_frames",
                f"{'; '.join(frozen)} while the robot moved "
                f"(max_frozen_seconds {recipe.max_frozen_seconds:g})",
            )


def embedding(camera_thumbs: Sequence[NDArray[np.float32]], trajectory: FloatArray) -> list[float]:
    """L2-normalised [video, STATE_WEIGHT x state] vector; cosine of two is their similarity.

    Video: per camera, the thumbnails of evenly spaced frames minus their temporal mean (what
    moves, not the static background every episode of a task shares). State: the trajectory.
    """
    video = np.concatenate([(t - t.mean(axis=0)).ravel() for t in camera_thumbs]).astype(np.float64)
    parts = [_unit(video), STATE_WEIGHT * _unit(np.asarray(trajectory, dtype=np.float64))]
    vector = _unit(np.concatenate(parts))
    return [round(float(x), 5) for x in vector]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Similarity of two embeddings; 0 when their layouts differ (other cameras or state dims)."""
    if len(a) != len(b) or not a:
        return 0.0
    return float(np.dot(np.asarray(a), np.asarray(b)))
