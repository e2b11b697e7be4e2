"""Episode bundles as MCAP files that Foxglove opens: cameras, state and actions on one timeline.

Everything uses Foxglove's own protobuf schemas, so no ROS install or message package is needed
to view it. Cameras become `foxglove.CompressedVideo`: the bundle's H.264 packets are remuxed to
Annex B one frame per message (no re-encode, exact frames; wamfleet's writer makes no
B-frames), or `foxglove.CompressedImage` (JPEG or PNG per frame) when the video is not H.264
without B-frames, or when images are asked for. State and actions become
`foxglove.JointStates`. Log times are the episode's wall clock, `started_at` plus each row's
timestamp, so exports of one robot line up in time.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal, cast

import av
import numpy as np
from av.bitstream import BitStreamFilterContext
from av.video.codeccontext import VideoCodecContext
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.CompressedVideo_pb2 import CompressedVideo
from foxglove_schemas_protobuf.JointState_pb2 import JointState
from foxglove_schemas_protobuf.JointStates_pb2 import JointStates
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import CompressionType, Writer
from numpy.typing import NDArray

from wamfleet.fleet_agent.episode_format import BundleError, Image
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.platform.contracts.episode import EpisodeManifest, video_file

LIBRARY = "wamfleet-mcap-export/1"
STATE_TOPIC = "/state"
ACTION_TOPIC = "/action"
METADATA_NAME = "wamfleet.episode"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ImageFormat = Literal["auto", "h264", "jpeg", "png"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("auto", "h264", "jpeg", "png")


def camera_topic(camera: str) -> str:
    return f"/cameras/{camera}"


@dataclass
class McapExport:
    """What was written: message count per topic and the format each camera went out in."""

    path: Path
    episode: EpisodeManifest
    messages: dict[str, int] = field(default_factory=dict)
    camera_formats: dict[str, str] = field(default_factory=dict)


def _file_descriptor_set(descriptor: Descriptor) -> bytes:
    """The schema Foxglove needs to decode a protobuf message: its file and every dependency."""
    fds = FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fd.CopyToProto(fds.file.add())

    add(descriptor.file)
    return bytes(fds.SerializeToString())


def _time_ns(when: datetime) -> int:
    return (when.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1) * 1000


def frame_times_ns(manifest: EpisodeManifest, timestamps: NDArray[np.float32]) -> NDArray[np.int64]:
    """Each frame's log time: the episode's start plus the row's timestamp, in ns since the epoch.

    Rows store float32 seconds; a timestamp that is frame_index / fps to float32 precision is
    taken as exactly that, so a regular episode gets exact frame times, not float32 noise."""
    stored = np.asarray(timestamps, dtype=np.float32)
    nominal = np.arange(len(stored), dtype=np.float64) / manifest.fps
    seconds = np.where(nominal.astype(np.float32) == stored, nominal, stored.astype(np.float64))
    return _time_ns(manifest.started_at) + np.round(seconds * 1e9).astype(np.int64)


def _remuxable_h264(path: Path) -> bool:
    """H.264 whose packets come in display order (no B-frames) goes out as is, frame by frame."""
    with av.open(str(path)) as container:
        if not container.streams.video or container.streams.video[0].codec_context.name != "h264":
            return False
        pts = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    return None not in pts and all(a < b for a, b in itertools.pairwise(cast(list[int], pts)))


def _h264_frames(path: Path, fps: float, num_frames: int) -> Iterator[bytes]:
    """One Annex B access unit per frame, SPS/PPS in front of every keyframe (what Foxglove needs)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        bsf = BitStreamFilterContext("h264_mp4toannexb", stream)
        expect = 0
        for packet in container.demux(stream):
            # The demuxer's last packet is an empty flush marker: it flushes the filter too.
            for out in bsf.filter(packet if packet.size else None):
                if out.pts is None or stream.time_base is None:
                    raise BundleError(path.name, f"packet {expect} has no timestamp")
                index = round(float(out.pts * stream.time_base) * fps)
                if index != expect:  # B-frames or a gap: not one message per frame, in order
                    raise BundleError(path.name, f"packet for frame {index} where {expect} was expected")
                expect += 1
                yield bytes(out)
        if expect != num_frames:
            raise BundleError(path.name, f"has {expect} frames, the manifest says {num_frames}")


class _ImageEncoder:
    """JPEG or PNG per frame, for cameras that cannot go out as H.264 video."""

    def __init__(self, fmt: Literal["jpeg", "png"], width: int, height: int) -> None:
        codec, pix_fmt = ("mjpeg", "yuvj420p") if fmt == "jpeg" else ("png", "rgb24")
        self._ctx = cast(VideoCodecContext, av.CodecContext.create(codec, "w"))
        self._ctx.width = width
        self._ctx.height = height
        self._ctx.pix_fmt = pix_fmt
        self._ctx.time_base = Fraction(1, 1000)
        self._pix_fmt = pix_fmt

    def encode(self, image: Image) -> bytes:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if self._pix_fmt != "rgb24":
            frame = frame.reformat(format=self._pix_fmt)
        packets = self._ctx.encode(frame)
        return b"".join(bytes(p) for p in packets)


def _encoded_frames(reader: EpisodeReader, camera: str, encoder: _ImageEncoder) -> Iterator[bytes]:
    for images in reader.iter_frames([camera]):
        yield encoder.encode(images[camera])


def _camera_format(path: Path, images: ImageFormat) -> str:
    """auto: remux H.264 (exact frames, no re-encode), else JPEG; h264 refuses other video."""
    if images == "auto":
        return "h264" if _remuxable_h264(path) else "jpeg"
    if images == "h264" and not _remuxable_h264(path):
        raise ValueError(f"{path.name}: not H.264 without B-frames; export it with --images jpeg or png")
    return images


def _camera_streams(reader: EpisodeReader, images: ImageFormat) -> dict[str, tuple[str, Iterator[bytes]]]:
    """Per camera: its output format and a lazy iterator of one encoded frame per row."""
    manifest = reader.manifest
    streams: dict[str, tuple[str, Iterator[bytes]]] = {}
    for cam in manifest.cameras:
        path = reader.directory / video_file(cam.name)
        fmt = _camera_format(path, images)
        if fmt == "h264":
            frames = _h264_frames(path, manifest.fps, manifest.num_frames)
        else:
            encoder = _ImageEncoder("png" if fmt == "png" else "jpeg", cam.width, cam.height)
            frames = _encoded_frames(reader, cam.name, encoder)
        streams[cam.name] = (fmt, frames)
    return streams


def _camera_message(camera: str, fmt: str, data: bytes, stamp_ns: int) -> bytes:
    msg: CompressedVideo | CompressedImage = (
        CompressedVideo(frame_id=camera, data=data, format=fmt)
        if fmt == "h264"
        else CompressedImage(frame_id=camera, data=data, format=fmt)
    )
    msg.timestamp.FromNanoseconds(stamp_ns)
    return bytes(msg.SerializeToString())


def _joint_states(names: list[str], values: NDArray[np.float32], stamp_ns: int) -> bytes:
    msg = JointStates(
        joints=[JointState(name=n, position=float(v)) for n, v in zip(names, values, strict=True)]
    )
    msg.timestamp.FromNanoseconds(stamp_ns)
    return bytes(msg.SerializeToString())


def _metadata(manifest: EpisodeManifest) -> dict[str, str]:
    """The manifest's descriptive fields as MCAP metadata (Foxglove shows it beside the file)."""
    return {
        "episode_id": str(manifest.episode_id),
        "robot_id": manifest.robot_id,
        "embodiment": f"{manifest.embodiment.name} v{manifest.embodiment.version}",
        "task": manifest.task,
        "source": str(manifest.source),
        "fps": f"{manifest.fps:g}",
        "num_frames": str(manifest.num_frames),
        "started_at": manifest.started_at.isoformat(),
        "has_actions": str(manifest.has_actions).lower(),
        "policy_version": manifest.policy_version or "",
        "outcome": manifest.outcome.model_dump_json(),
        "tags": json.dumps(manifest.tags, sort_keys=True),
    }


class _Channels:
    """One channel per topic on a Foxglove protobuf schema (each schema registered once)."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._schemas: dict[str, int] = {}
        self._ids: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def add(self, topic: str, descriptor: Descriptor) -> None:
        name = descriptor.full_name
        if name not in self._schemas:
            self._schemas[name] = self._writer.register_schema(
                name, SchemaEncoding.Protobuf, _file_descriptor_set(descriptor)
            )
        self._ids[topic] = self._writer.register_channel(topic, MessageEncoding.Protobuf, self._schemas[name])
        self.counts[topic] = 0

    def emit(self, topic: str, stamp_ns: int, data: bytes) -> None:
        seq = self.counts[topic]
        self._writer.add_message(
            self._ids[topic], log_time=stamp_ns, data=data, publish_time=stamp_ns, sequence=seq
        )
        self.counts[topic] = seq + 1


def _write_episode(
    writer: Writer, reader: EpisodeReader, streams: dict[str, tuple[str, Iterator[bytes]]]
) -> dict[str, int]:
    """All channels frame by frame, so each chunk of the file covers a short stretch of time."""
    manifest = reader.manifest
    times = frame_times_ns(manifest, reader.timestamps())
    states, actions = reader.states(), reader.actions()
    channels = _Channels(writer)
    for cam, (fmt, _) in streams.items():
        channels.add(
            camera_topic(cam), CompressedVideo.DESCRIPTOR if fmt == "h264" else CompressedImage.DESCRIPTOR
        )
    channels.add(STATE_TOPIC, JointStates.DESCRIPTOR)
    if actions is not None:
        channels.add(ACTION_TOPIC, JointStates.DESCRIPTOR)
    for k, stamp in enumerate(times.tolist()):
        for cam, (fmt, frames) in streams.items():
            data = next(frames, None)
            if data is None:
                raise BundleError(video_file(cam), f"ends before frame {k}")
            channels.emit(camera_topic(cam), stamp, _camera_message(cam, fmt, data, stamp))
        channels.emit(STATE_TOPIC, stamp, _joint_states(manifest.state_names, states[k], stamp))
        if actions is not None:
            channels.emit(ACTION_TOPIC, stamp, _joint_states(manifest.action_names, actions[k], stamp))
    for cam, (_, frames) in streams.items():  # surplus frames: the video and the rows disagree
        if next(frames, None) is not None:
            raise BundleError(video_file(cam), f"more frames than the {manifest.num_frames} rows")
    writer.add_metadata(METADATA_NAME, _metadata(manifest))
    return channels.counts


@contextmanager
def _atomic_file(out: Path) -> Iterator[BinaryIO]:
    """A hidden temporary beside `out`, renamed over it only once complete: no half-written file."""
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def export_mcap(bundle: Path, out: Path, *, images: ImageFormat = "auto", verify: bool = True) -> McapExport:
    """Writes one episode bundle as an MCAP file at `out` (atomically).

    `images`: auto (H.264 remuxed where possible, else JPEG), h264, jpeg or png. `verify` checks
    the bundle's hashes first. Raises BundleError for a bad bundle, ValueError for a bad option."""
    if images not in IMAGE_FORMATS:
        raise ValueError(f"images: expected one of {list(IMAGE_FORMATS)}, got {images!r}")
    out = Path(out)
    with EpisodeReader(Path(bundle), verify=verify) as reader:
        streams = _camera_streams(reader, images)
        with _atomic_file(out) as f:
            writer = Writer(f, compression=CompressionType.ZSTD)
            writer.start(profile="", library=LIBRARY)
            counts = _write_episode(writer, reader, streams)
            writer.finish()
        return McapExport(
            path=out,
            episode=reader.manifest,
            messages=counts,
            camera_formats={cam: fmt for cam, (fmt, _) in streams.items()},
        )
