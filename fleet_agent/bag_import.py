"""ROS 2 bags and MCAP recordings as episode bundles, ready for the uploader.

A mapping file (one per embodiment) says which topic is which camera, which topics make the
state and the action vectors, and how the recording splits into episodes. Messages are aligned
on their stamps and resampled to the embodiment's fps by holding the latest sample at or
before each frame time (causal: a frame never carries what the robot could not know yet);
images are center-cropped and scaled to the camera's size, as `import-video` does.

Inputs: rosbag2 directories (sqlite3 or MCAP storage) and single `.db3` files through `rosbags`;
plain `.mcap` files (CDR-encoded ROS 2 messages) through `mcap` and `mcap-ros2-support`.

The bag is the unit of atomicity: every episode is written under `<spool>/.importing/` (which
the agent never uploads from nor recovers) and moved into `ready/` only once all of them are
finished; a bad bag leaves nothing in the spool.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import av
import numpy as np
import yaml
from av.video.codeccontext import VideoCodecContext
from mcap.reader import make_reader
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from mcap_ros2.decoder import DecoderFactory
from numpy.typing import NDArray
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.spool import Spool
from wamfleet.fleet_agent.video_import import _fit
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource, Outcome
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.contracts.ids import SLUG_PATTERN, is_slug, new_episode_id

STAGING_DIR = ".importing"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

IMAGE_TYPES = ("sensor_msgs/Image", "sensor_msgs/CompressedImage")
JOINT_STATE = "sensor_msgs/JointState"
ARRAY_TYPES = ("std_msgs/Float64MultiArray", "std_msgs/Float32MultiArray")
SCALAR_TYPES = ("std_msgs/Float64", "std_msgs/Float32")
VECTOR_TYPES = (JOINT_STATE, *ARRAY_TYPES, *SCALAR_TYPES)
MARKER_TYPES = ("std_msgs/Bool", "std_msgs/String", "std_msgs/Empty")


class BagError(ValueError):
    """A bag cannot be imported as mapped; the message names the topic, file or byte offset."""


# The mapping file ----------------------------------------------------------------------------


def _as_list(value: Any) -> Any:
    """`state: /joint_states` and a single mapping are shorthands for a one-element list."""
    if value is None:
        return []
    if isinstance(value, str | dict):
        value = [value]
    if isinstance(value, list):
        return [{"topic": v} if isinstance(v, str) else v for v in value]
    return value


class VectorTopic(BaseModel):
    """One topic feeding a slice of the state or action vector (slices concatenate in order).

    JointState: `names` picks joints by name in order (default: the embodiment's feature names
    for this slice) from `field`. Float32/64MultiArray: `indices` picks elements (default: all).
    Float32/64: one value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(min_length=1)
    names: list[str] | None = Field(default=None, min_length=1)
    field: Literal["position", "velocity", "effort"] = "position"
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_selector(self) -> VectorTopic:
        if self.names is not None and self.indices is not None:
            raise ValueError("give names (JointState) or indices (arrays), not both")
        return self


class SplitRule(BaseModel):
    """How a recording splits into episodes.

    `topic`: std_msgs/Bool (true starts an episode, false ends it), std_msgs/String (a non-empty
    string starts one and is its task unless one is given; an empty string ends it) or
    std_msgs/Empty (each message is a boundary). `gap_s`: a longer silence on any camera, state
    or action topic also ends an episode (null: never)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str | None = None
    gap_s: float | None = Field(default=1.0, gt=0)


class BagMapping(BaseModel):
    """Which topics of a bag make an embodiment's episodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embodiment: Annotated[str, Field(pattern=SLUG_PATTERN)] | EmbodimentSpec = Field(
        description="A registered embodiment's name (fetched from the platform) or the full spec."
    )
    cameras: dict[str, str] = Field(min_length=1, description="Camera name -> image topic.")
    state: Annotated[list[VectorTopic], BeforeValidator(_as_list)] = Field(default_factory=list)
    action: Annotated[list[VectorTopic], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Empty: video-only episodes."
    )
    split: SplitRule = Field(default_factory=SplitRule)
    stamps: Literal["header", "receive"] = Field(
        default="header", description="Align on header.stamp where a message has one, or on receive time."
    )
    task: str | None = None
    outcome: Outcome | None = None
    source: EpisodeSource = EpisodeSource.imported
    site: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    min_frames: int = Field(default=1, ge=1, description="Shorter stretches are skipped, not imported.")

    @property
    def embodiment_name(self) -> str:
        return self.embodiment if isinstance(self.embodiment, str) else self.embodiment.name

    def topics(self) -> set[str]:
        found = set(self.cameras.values()) | {v.topic for v in (*self.state, *self.action)}
        return found | ({self.split.topic} if self.split.topic else set())

    def check(self, spec: EmbodimentSpec) -> None:
        """Refuses a mapping that cannot fill this embodiment's frames, before any bag is read."""
        if spec.name != self.embodiment_name:
            raise BagError(f"mapping: for embodiment {self.embodiment_name!r}, not {spec.name!r}")
        cams = {c.name for c in spec.cameras}
        if set(self.cameras) != cams:
            raise BagError(
                f"mapping.cameras: embodiment {spec.name!r} has cameras {sorted(cams)}, "
                f"the mapping names {sorted(self.cameras)}"
            )
        if spec.state_dim and not self.state:
            raise BagError(
                f"mapping.state: embodiment {spec.name!r} has {spec.state_dim} state values; map them"
            )
        if self.state and not spec.state_dim:
            raise BagError(f"mapping.state: embodiment {spec.name!r} has no state values")
        if self.action and not spec.action_dim:
            raise BagError(f"mapping.action: embodiment {spec.name!r} has no action values")


def load_mapping(path: Path) -> BagMapping:
    """Reads a mapping from YAML or JSON; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BagError(f"{path}: cannot read the mapping ({exc.strerror or exc})") from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BagError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({exc})"
        ) from None
    try:
        return BagMapping.model_validate(raw)
    except ValidationError as exc:
        raise BagError(f"{path}: {describe_validation_error(exc, 'mapping')}") from None


# Reading bags --------------------------------------------------------------------------------


def _short_type(msgtype: str) -> str:
    """`sensor_msgs/msg/Image` and `sensor_msgs/Image` are the same type."""
    return msgtype.replace("/msg/", "/")


def _mcap_damage(path: Path) -> str | None:
    """Reads an MCAP file record by record; says where it breaks, or None if it is whole."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        good = 0
        try:
            for _ in StreamReader(f, skip_magic=False, emit_chunks=False).records:
                good = f.tell()
        except Exception as exc:  # noqa: BLE001 - every parse failure is reported as damage
            return f"truncated or damaged at byte offset {good} of {size} ({type(exc).__name__}: {exc})"
    return None


def _sqlite_damage(path: Path) -> str | None:
    """A cut-short .db3: SQLite's header says how many pages the file should hold."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return f"truncated or damaged at byte offset 0 of {size} (no SQLite header)"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    header_count_valid = head[24:28] == head[92:96]  # else the page count is stale (old writers)
    if header_count_valid and size < page_size * pages:
        return f"truncated at byte offset {size}; its header declares {page_size * pages} bytes"
    return None


class _McapSource:
    """A plain MCAP file of CDR-encoded ROS 2 messages (what ROS 2 and Foxglove tools record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self._decoders = DecoderFactory()
        try:
            with open(path, "rb") as f:
                self._summary = make_reader(f).get_summary()
        except Exception as exc:  # noqa: BLE001 - a bad footer or summary: say where the file breaks
            raise BagError(self._damage(exc)) from None
        if self._summary is not None:
            summary = self._summary
            self.topics = {
                ch.topic: _short_type(summary.schemas[ch.schema_id].name) if ch.schema_id else ""
                for ch in summary.channels.values()
            }
        else:  # no summary section (a streamed file): the channels are in the data section
            self.topics = {ch.topic: _short_type(sc.name) if sc else "" for sc, ch in self._linear(None)}

    def _damage(self, exc: Exception) -> str:
        where = _mcap_damage(self.path) or f"cannot read it ({type(exc).__name__}: {exc})"
        return f"{self.name}: {where}"

    def _linear(self, topics: set[str] | None) -> Iterator[Any]:
        """Record by record from the start. topics=None: each channel once; else their messages."""
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        with open(self.path, "rb") as f:
            for record in StreamReader(f, skip_magic=False, emit_chunks=False).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                    if topics is None:
                        yield schemas.get(record.schema_id), record
                elif isinstance(record, Message) and topics is not None:
                    channel = channels.get(record.channel_id)
                    if channel is not None and channel.topic in topics:
                        yield schemas.get(channel.schema_id), channel, record

    def _raw(self, topics: set[str]) -> Iterator[tuple[Schema | None, Channel, Message]]:
        if self._summary is None:
            yield from self._linear(topics)
            return
        with open(self.path, "rb") as f:  # indexed: log-time order, only chunks holding these topics
            yield from make_reader(f).iter_messages(topics=sorted(topics), log_time_order=True)

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
        """(topic, receive time ns, decoded message), in log-time order."""
        decoders: dict[int, Any] = {}
        raw = self._raw(set(topics))
        while True:
            try:
                item = next(raw, None)
            except Exception as exc:  # noqa: BLE001 - every parse failure is reported with its offset
                raise BagError(self._damage(exc)) from None
            if item is None:
                return
            schema, channel, message = item
            decode = decoders.get(channel.id)
            if decode is None:
                try:
                    decode = self._decoders.decoder_for(channel.message_encoding, schema)
                except Exception as exc:  # noqa: BLE001 - a schema the ROS 2 parser rejects
                    raise BagError(f"topic {channel.topic}: cannot parse its schema ({exc})") from None
                if decode is None:
                    kind = schema.name if schema else "no schema"
                    raise BagError(
                        f"topic {channel.topic}: {channel.message_encoding!r} messages ({kind}) "
                        "are not supported; expected CDR with a ros2msg schema"
                    )
                decoders[channel.id] = decode
            try:
                msg = decode(message.data)
            except Exception as exc:  # noqa: BLE001 - a malformed message is reported by topic
                raise BagError(
                    f"topic {channel.topic}: cannot decode the message logged at {message.log_time} ns "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            yield channel.topic, message.log_time, msg


class _RosbagSource:
    """A rosbag2 directory (sqlite3 or MCAP storage), a `.db3` file or ROS 1 bag, via rosbags."""

    def __init__(self, path: Path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = path
        self.name = path.name
        # Bags without embedded definitions (older ROS 2 recorders) fall back to the standard types.
        self._reader = self._guard(lambda: AnyReader([path], default_typestore=get_typestore(Stores.LATEST)))
        self._guard(self._reader.open)
        types: dict[str, set[str]] = {}
        for conn in self._reader.connections:
            types.setdefault(conn.topic, set()).add(_short_type(conn.msgtype))
        self.topics = {t: ", ".join(sorted(kinds)) for t, kinds in types.items()}

    def _guard(self, step: Any) -> Any:
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - rosbags, sqlite and zstd errors all mean a bad bag
            raise BagError(self._describe(exc)) from None

    def _describe(self, exc: Exception) -> str:
        """Names the damaged storage file and where it breaks, when a check can find it."""
        files = sorted(self.path.iterdir()) if self.path.is_dir() else [self.path]
        checks = {".mcap": _mcap_damage, ".db3": _sqlite_damage}
        for f in files:
            check = checks.get(f.suffix)
            if check is not None and (damage := check(f)):
                where = f"{self.name}/{f.name}" if self.path.is_dir() else self.name
                return f"{where}: {damage}"
        return f"{self.name}: cannot read the bag ({type(exc).__name__}: {exc})"

    def close(self) -> None:
        if self._reader.stack is not None:
            self._reader.close()

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
        """(topic, receive time ns, decoded message), in receive-time order."""
        conns = [c for c in self._reader.connections if c.topic in set(topics)]
        if not conns:  # rosbags reads every topic when given none
            return
        stream = iter(self._reader.messages(connections=conns))
        while True:
            item = self._guard(lambda: next(stream, None))
            if item is None:
                return
            conn, log_ns, raw = item
            try:
                msg = self._reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - a malformed message is reported by topic
                raise BagError(
                    f"topic {conn.topic}: cannot decode the {conn.msgtype} message received at {log_ns} ns "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            yield conn.topic, log_ns, msg


def _open_source(path: Path) -> _McapSource | _RosbagSource:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    if path.is_file() and path.suffix.lower() == ".mcap":
        return _McapSource(path)
    if path.is_dir() and not (path / "metadata.yaml").exists():
        raise BagError(f"{path}: a directory without metadata.yaml is not a rosbag2 bag")
    return _RosbagSource(path)


# Turning messages into vectors and images -------------------------------------------------------


def _stamp(msg: Any, log_ns: int, mode: str) -> int:
    if mode == "header":
        header = getattr(msg, "header", None)
        stamp = getattr(header, "stamp", None)
        if stamp is not None and (stamp.sec or stamp.nanosec):
            return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return log_ns


@dataclass
class _Slice:
    """A resolved VectorTopic: what to pull out of each message on its topic."""

    topic: str
    kind: str
    dim: int
    names: list[str] | None = None
    field: str = "position"
    indices: list[int] | None = None

    def values(self, msg: Any, n: int) -> NDArray[np.float64]:
        where = f"topic {self.topic}: message {n}"
        if self.kind == JOINT_STATE:
            assert self.names is not None
            have = list(msg.name)
            data = np.asarray(getattr(msg, self.field), dtype=np.float64)
            if len(data) != len(have):
                raise BagError(f"{where}: {len(have)} joint names but {len(data)} {self.field} values")
            index = {name: i for i, name in enumerate(have)}
            missing = [name for name in self.names if name not in index]
            if missing:
                raise BagError(f"{where}: joints {missing} missing (it has {have})")
            out = data[[index[name] for name in self.names]]
        elif self.kind in SCALAR_TYPES:
            out = np.asarray([msg.data], dtype=np.float64)
        else:
            data = np.asarray(msg.data, dtype=np.float64).reshape(-1)
            if self.indices is not None:
                if max(self.indices) >= len(data):
                    raise BagError(f"{where}: has {len(data)} values, index {max(self.indices)} asked")
                out = data[self.indices]
            else:
                if len(data) != self.dim:
                    raise BagError(f"{where}: has {len(data)} values, {self.dim} expected")
                out = data
        if not np.all(np.isfinite(out)):
            raise BagError(f"{where}: non-finite value {out.tolist()}")
        return out


def _resolve(
    part: str, topics: list[VectorTopic], feature_names: list[str], types: Mapping[str, str]
) -> list[_Slice]:
    """Sizes each slice (names/indices given, a scalar, or the one open slice takes the rest)."""
    if not topics:  # no state (a camera-only embodiment) or no action (video-only episodes)
        return []
    slices: list[_Slice] = []
    open_slice: int | None = None
    for i, vt in enumerate(topics):
        kind = types[vt.topic]
        if kind not in VECTOR_TYPES:
            raise BagError(
                f"topic {vt.topic}: type {kind} cannot feed mapping.{part}; "
                f"expected one of {', '.join(VECTOR_TYPES)}"
            )
        if vt.names is not None and kind != JOINT_STATE:
            raise BagError(f"mapping.{part}: names are for JointState topics; {vt.topic} is {kind}")
        if vt.indices is not None and kind not in ARRAY_TYPES:
            raise BagError(f"mapping.{part}: indices are for array topics; {vt.topic} is {kind}")
        dim = 1 if kind in SCALAR_TYPES else len(vt.names or vt.indices or [])
        if dim == 0:
            if open_slice is not None:
                raise BagError(
                    f"mapping.{part}: {topics[open_slice].topic} and {vt.topic} both leave their size "
                    "open; give names or indices"
                )
            open_slice = i
        slices.append(_Slice(vt.topic, kind, dim, vt.names, vt.field, vt.indices))
    known = sum(s.dim for s in slices)
    if open_slice is not None:
        slices[open_slice].dim = len(feature_names) - known
        if slices[open_slice].dim <= 0:
            raise BagError(f"mapping.{part}: the other topics already fill all {len(feature_names)} values")
    total = sum(s.dim for s in slices)
    if total != len(feature_names):
        raise BagError(
            f"mapping.{part}: the topics give {total} values, the embodiment has {len(feature_names)}"
        )
    offset = 0
    for s in slices:
        if s.kind == JOINT_STATE and s.names is None:
            s.names = feature_names[offset : offset + s.dim]
        offset += s.dim
    return slices


_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3, "8uc4": 4}


class _ImageDecoder:
    """sensor_msgs/Image (8-bit encodings) and CompressedImage (JPEG, PNG) to RGB arrays."""

    def __call__(self, msg: Any, kind: str, where: str) -> NDArray[np.uint8]:
        if kind == "sensor_msgs/Image":
            return self._raw(msg, where)
        data = bytes(msg.data)
        if data[:3] == b"\xff\xd8\xff":
            codec = "mjpeg"
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            codec = "png"
        else:
            raise BagError(f"{where}: compressed image format {msg.format!r} is not JPEG or PNG")
        try:  # a fresh decoder per image: a reused PNG decoder garbles every image after the first
            ctx = cast(VideoCodecContext, av.CodecContext.create(codec, "r"))
            frames = ctx.decode(av.Packet(data))
        except av.FFmpegError as exc:
            raise BagError(f"{where}: cannot decode its {codec} data ({exc})") from None
        if not frames:
            raise BagError(f"{where}: its {codec} data holds no image")
        return np.asarray(frames[0].to_ndarray(format="rgb24"), dtype=np.uint8)

    @staticmethod
    def _raw(msg: Any, where: str) -> NDArray[np.uint8]:
        encoding = str(msg.encoding).lower()
        channels = _CHANNELS.get(encoding)
        if channels is None:
            raise BagError(f"{where}: image encoding {msg.encoding!r} not supported ({', '.join(_CHANNELS)})")
        h, w, step = int(msg.height), int(msg.width), int(msg.step)
        data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
        if h <= 0 or w <= 0 or step < w * channels or data.size < h * step:
            raise BagError(f"{where}: {data.size} bytes do not hold a {w}x{h} {encoding} image (step {step})")
        pixels = data[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
        if channels == 1:
            return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
        if encoding.startswith("bgr") or encoding in ("8uc3", "8uc4"):  # cv_bridge's convention
            return np.ascontiguousarray(pixels[:, :, 2::-1])
        return np.ascontiguousarray(pixels[:, :, :3])


# Planning episodes ----------------------------------------------------------------------------


@dataclass
class _Stream:
    """One topic's stamps (non-decreasing) and, for vector topics, each slice's values."""

    topic: str
    stamps: list[int] = field(default_factory=list)
    values: dict[int, list[NDArray[np.float64]]] = field(default_factory=dict)
    markers: list[bool | str | None] = field(default_factory=list)


@dataclass
class _Episode:
    index: int
    times: NDArray[np.int64]
    state: NDArray[np.float32]
    action: NDArray[np.float32] | None
    picks: dict[str, NDArray[np.int64]]  # camera -> message ordinal on its topic, per frame
    task: str | None


@dataclass
class Skipped:
    """A stretch of the bag that did not become an episode, and why."""

    start_s: float
    reason: str


@dataclass
class BagImport:
    manifests: list[EpisodeManifest] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _windows(marker: _Stream | None, kind: str, start: int, end: int) -> list[tuple[int, int, str | None]]:
    """Half-open [start, end) stretches the marker topic marks as episodes (all of it if none)."""
    if marker is None:
        return [(start, end, None)]
    out: list[tuple[int, int, str | None]] = []
    if kind == "std_msgs/Empty":
        bounds = [start, *marker.stamps, end]
        return [(a, b, None) for a, b in itertools.pairwise(bounds) if a < b]
    opened: tuple[int, str | None] | None = None
    for t, value in zip(marker.stamps, marker.markers, strict=True):
        if opened is not None:
            out.append((opened[0], t, opened[1]))
            opened = None
        if value is True or (isinstance(value, str) and value.strip()):
            opened = (t, value.strip() if isinstance(value, str) else None)
    if opened is not None:
        out.append((opened[0], end, opened[1]))
    return [w for w in out if w[0] < w[1]]


def _pieces(
    window: tuple[int, int], required: list[_Stream], gap_ns: int | None
) -> tuple[list[tuple[int, int]], str | None]:
    """Closed stretches inside a window where every required topic has data and no gap."""
    ws, we = window
    firsts, lasts = [], []
    cuts: list[tuple[int, int]] = []
    for stream in required:
        stamps = np.asarray(stream.stamps, dtype=np.int64)
        inside = stamps[(stamps >= ws) & (stamps < we)]
        if inside.size == 0:
            return [], f"no {stream.topic} messages"
        firsts.append(int(inside[0]))
        lasts.append(int(inside[-1]))
        if gap_ns is not None:
            for i in np.nonzero(np.diff(inside) > gap_ns)[0]:
                cuts.append((int(inside[i]), int(inside[i + 1])))
    if max(firsts) > min(lasts):
        return [], "the mapped topics do not overlap in time"
    pieces = [(max(firsts), min(lasts))]
    for a, b in sorted(cuts):
        nxt = []
        for p, q in pieces:
            if b <= p or a >= q:  # the gap (a, b) misses this piece
                nxt.append((p, q))
                continue
            if p <= a:
                nxt.append((p, a))
            if b <= q:
                nxt.append((b, q))
        pieces = nxt
    return [(p, q) for p, q in pieces if p <= q], None


def _held(stamps: list[int], times: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of the latest message at or before each time (zero-order hold)."""
    return np.searchsorted(np.asarray(stamps, dtype=np.int64), times, side="right").astype(np.int64) - 1


# Importing -----------------------------------------------------------------------------------


def _seconds(ns: int) -> float:
    return ns / 1e9


def _vectors(slices: list[_Slice], offset: int, streams: dict[str, _Stream], times: NDArray[np.int64]) -> Any:
    """Each slice's held values at the frame times, concatenated: shape (frames, dims)."""
    cols = [
        np.stack(streams[s.topic].values[offset + i])[_held(streams[s.topic].stamps, times)]
        for i, s in enumerate(slices)
    ]
    if not cols:
        return np.zeros((len(times), 0), dtype=np.float32)
    return np.concatenate(cols, axis=1).astype(np.float32)


class _BagImporter:
    """Two passes over the bag: stamps and vectors first (to plan the episodes), then only the
    images the planned frames use, so memory holds vectors and a few frames, never the video."""

    def __init__(
        self,
        source: _McapSource | _RosbagSource,
        path: Path,
        mapping: BagMapping,
        spec: EmbodimentSpec,
        *,
        robot_id: str,
        task: str | None,
        outcome: Outcome | None,
        tags: Mapping[str, str],
    ) -> None:
        self.source = source
        self.path = path
        self.mapping = mapping
        self.spec = spec
        self.robot_id = robot_id
        self.task = task
        self.outcome = outcome or mapping.outcome
        self.tags = {"source-file": path.name[:200], **mapping.tags, **tags}
        self._check_topics()
        self.state_slices = _resolve("state", mapping.state, spec.state_names, source.topics)
        self.action_slices = _resolve("action", mapping.action, spec.action_names, source.topics)
        self.result = BagImport()

    def _check_topics(self) -> None:
        topics, mapping = self.source.topics, self.mapping
        for topic in sorted(mapping.topics()):
            if topic not in topics:
                have = ", ".join(f"{t} ({k})" for t, k in sorted(topics.items())) or "none"
                raise BagError(f"topic {topic}: not in {self.source.name} (its topics: {have})")
        for cam, topic in mapping.cameras.items():
            if topics[topic] not in IMAGE_TYPES:
                raise BagError(
                    f"topic {topic}: type {topics[topic] or 'unknown'} cannot feed camera {cam!r}; "
                    f"expected {' or '.join(IMAGE_TYPES)}"
                )
        self.marker_kind = topics[mapping.split.topic] if mapping.split.topic else ""
        if mapping.split.topic and self.marker_kind not in MARKER_TYPES:
            raise BagError(
                f"topic {mapping.split.topic}: type {self.marker_kind or 'unknown'} cannot split "
                f"episodes; expected one of {', '.join(MARKER_TYPES)}"
            )

    def _read_streams(self) -> dict[str, _Stream]:
        """Pass 1: every mapped topic's stamps, the vectors, the markers; images stay in the bag."""
        mapping = self.mapping
        by_topic: dict[str, list[tuple[int, _Slice]]] = {}
        for i, s in enumerate([*self.state_slices, *self.action_slices]):
            by_topic.setdefault(s.topic, []).append((i, s))
        streams = {t: _Stream(t) for t in mapping.topics()}
        for topic, log_ns, msg in self.source.messages(sorted(streams)):
            stream = streams[topic]
            is_marker = topic == mapping.split.topic
            stamp = log_ns if is_marker else _stamp(msg, log_ns, mapping.stamps)
            n = len(stream.stamps)
            if stream.stamps and stamp < stream.stamps[-1]:
                raise BagError(
                    f"topic {topic}: stamps out of order at message {n} "
                    f"({_seconds(stamp):.6f} s after {_seconds(stream.stamps[-1]):.6f} s)"
                )
            stream.stamps.append(stamp)
            for i, s in by_topic.get(topic, []):
                stream.values.setdefault(i, []).append(s.values(msg, n))
            if is_marker:
                kind = self.marker_kind
                value = msg.data if kind != "std_msgs/Empty" else None
                stream.markers.append(bool(value) if kind == "std_msgs/Bool" else value)
        return streams

    def plan(self) -> list[_Episode]:
        """Windows from the marker topic, cut at gaps, resampled on a grid at the embodiment's fps."""
        mapping, spec = self.mapping, self.spec
        streams = self._read_streams()
        required_topics = sorted(
            set(mapping.cameras.values()) | {s.topic for s in (*self.state_slices, *self.action_slices)}
        )
        for topic in required_topics:
            if not streams[topic].stamps:
                raise BagError(f"topic {topic}: no messages in {self.source.name}")
        required = [streams[t] for t in required_topics]
        start = min(s.stamps[0] for s in required)
        end = max(s.stamps[-1] for s in required) + 1
        marker = streams[mapping.split.topic] if mapping.split.topic else None
        gap_ns = None if mapping.split.gap_s is None else round(mapping.split.gap_s * 1e9)
        step_ns = 1e9 / spec.fps
        episodes: list[_Episode] = []
        for ws, we, marker_task in _windows(marker, self.marker_kind, start, end):
            pieces, why = _pieces((ws, we), required, gap_ns)
            if why:
                self.result.skipped.append(Skipped(_seconds(ws - start), why))
            for p, q in pieces:
                count = math.floor((q - p) / step_ns + 1e-6) + 1
                if count < mapping.min_frames:
                    self.result.skipped.append(
                        Skipped(_seconds(p - start), f"{count} frames, under min_frames {mapping.min_frames}")
                    )
                    continue
                times = p + np.round(np.arange(count) * step_ns).astype(np.int64)
                action = _vectors(self.action_slices, len(self.state_slices), streams, times)
                episodes.append(
                    _Episode(
                        index=len(episodes),
                        times=times,
                        state=_vectors(self.state_slices, 0, streams, times),
                        action=action if self.action_slices else None,
                        picks={c: _held(streams[t].stamps, times) for c, t in mapping.cameras.items()},
                        task=self.task or marker_task or mapping.task,
                    )
                )
        if not episodes:
            why = "; ".join(f"at {s.start_s:.3f} s: {s.reason}" for s in self.result.skipped) or "no data"
            raise BagError(f"{self.source.name}: no episodes found ({why})")
        for ep in episodes:
            if not ep.task:
                raise BagError(
                    f"task: episode {ep.index} has none; set `task` in the mapping, pass --task, "
                    "or split on a std_msgs/String topic"
                )
        return episodes

    def _image_uses(self, episodes: list[_Episode]) -> dict[str, dict[int, list[tuple[str, int, int]]]]:
        """topic -> message ordinal on it -> the (camera, episode, frame) slots that show it."""
        uses: dict[str, dict[int, list[tuple[str, int, int]]]] = {}
        for ep in episodes:
            for cam, picks in ep.picks.items():
                per_topic = uses.setdefault(self.mapping.cameras[cam], {})
                for k, ordinal in enumerate(picks.tolist()):
                    per_topic.setdefault(ordinal, []).append((cam, ep.index, k))
        return uses

    def write(self, episodes: list[_Episode], out_dir: Path) -> BagImport:
        """Pass 2: decodes only the images the frames show and writes the episodes in order."""
        uses = self._image_uses(episodes)
        cameras = {c.name: c for c in self.spec.cameras}
        sink = _FrameSink(episodes, len(cameras), lambda ep: self._writer(ep, out_dir), self.outcome)
        decode = _ImageDecoder()
        ordinals = dict.fromkeys(uses, 0)
        try:
            for topic, _, msg in self.source.messages(sorted(uses)):
                n = ordinals[topic]
                ordinals[topic] = n + 1
                wanted = uses[topic].get(n)
                if not wanted:
                    continue
                image = decode(msg, self.source.topics[topic], f"topic {topic}: message {n}")
                fitted = {cam: _fit(image, cameras[cam]) for cam in {cam for cam, _, _ in wanted}}
                for cam, e, k in wanted:
                    sink.put(cam, e, k, fitted[cam])
                if sink.done:
                    break
        finally:
            sink.abort()
        if not sink.done:
            e, k = sink.slots[sink.next_slot]
            raise BagError(
                f"{self.source.name}: the image for episode {e} frame {k} was not found on a reread"
            )
        self.result.manifests += sink.manifests
        self.result.directories += sink.directories
        return self.result

    def _writer(self, ep: _Episode, out_dir: Path) -> EpisodeWriter:
        episode_id = new_episode_id()
        assert ep.task is not None
        return EpisodeWriter(
            out_dir / str(episode_id),
            episode_id=episode_id,
            robot_id=self.robot_id,
            embodiment=self.spec,
            task=ep.task,
            video_only=not self.action_slices,
            source=self.mapping.source,
            site=self.mapping.site,
            tags={**self.tags, "bag-episode": str(ep.index)},
            started_at=_EPOCH + timedelta(microseconds=int(ep.times[0]) // 1000),
        )


class _FrameSink:
    """Takes camera images for (episode, frame) slots as the bag yields them and writes each
    frame as soon as it and every frame before it are complete, so memory holds only the few
    frames whose cameras have not all arrived yet."""

    def __init__(
        self,
        episodes: list[_Episode],
        num_cameras: int,
        open_writer: Callable[[_Episode], EpisodeWriter],
        outcome: Outcome | None,
    ) -> None:
        self.episodes = episodes
        self.num_cameras = num_cameras
        self.open_writer = open_writer
        self.outcome = outcome
        self.slots = [(ep.index, k) for ep in episodes for k in range(len(ep.times))]
        self.next_slot = 0
        self.pending: dict[tuple[int, int], dict[str, NDArray[np.uint8]]] = {}
        self.writer: EpisodeWriter | None = None
        self.manifests: list[EpisodeManifest] = []
        self.directories: list[Path] = []

    @property
    def done(self) -> bool:
        return self.next_slot == len(self.slots)

    def put(self, camera: str, e: int, k: int, image: NDArray[np.uint8]) -> None:
        self.pending.setdefault((e, k), {})[camera] = image
        while not self.done and len(self.pending.get(self.slots[self.next_slot], {})) == self.num_cameras:
            self._write(*self.slots[self.next_slot])
            self.next_slot += 1

    def _write(self, e: int, k: int) -> None:
        ep = self.episodes[e]
        if k == 0:
            self.writer = self.open_writer(ep)
        assert self.writer is not None
        action = ep.action[k] if ep.action is not None else None
        self.writer.add_frame(self.pending.pop((e, k)), ep.state[k], action)
        if k == len(ep.times) - 1:
            self.manifests.append(self.writer.close(self.outcome))
            self.directories.append(self.writer.directory)
            self.writer = None

    def abort(self) -> None:
        """Discards an episode left half-written by an error."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def write_bag_episodes(
    path: Path,
    mapping: BagMapping,
    out_dir: Path,
    *,
    robot_id: str,
    embodiment: EmbodimentSpec,
    task: str | None = None,
    outcome: Outcome | None = None,
    tags: Mapping[str, str] | None = None,
) -> BagImport:
    """Writes every episode of the bag as a finished bundle under `out_dir`; raises BagError on a
    bad bag, leaving the caller to discard `out_dir`. `task` and `outcome` override the mapping."""
    if not is_slug(robot_id):  # checked before reading the bag, not when the first episode opens
        raise BagError(f"robot_id: {robot_id!r} is not an id (lowercase letters, digits, '.', '_', '-')")
    mapping.check(embodiment)
    path = Path(path)
    source = _open_source(path)
    try:
        importer = _BagImporter(
            source, path, mapping, embodiment, robot_id=robot_id, task=task, outcome=outcome, tags=tags or {}
        )
        return importer.write(importer.plan(), out_dir)
    finally:
        if isinstance(source, _RosbagSource):
            source.close()


def _publish(spool: Spool, directories: list[Path], staging: Path) -> list[Path]:
    """Moves the finished episodes to ready/, one rename each. If one move fails, the ones
    already moved go back to staging (and are discarded with it): a bag stays all or nothing.
    Only a crash between two renames can split it; the rest then stay under .importing/."""
    moved: list[Path] = []
    try:
        for directory in directories:
            moved.append(spool.mark_ready(directory))
    except BaseException:
        for directory in moved:
            with contextlib.suppress(OSError):  # the agent may already be uploading it
                os.rename(directory, staging / directory.name)
        raise
    return moved


def import_bag(
    path: Path,
    mapping: BagMapping,
    spool: Spool,
    *,
    robot_id: str,
    embodiment: EmbodimentSpec,
    task: str | None = None,
    outcome: Outcome | None = None,
    tags: Mapping[str, str] | None = None,
) -> BagImport:
    """Imports every episode of the bag into the spool's ready queue, or none of them."""
    staging_root = spool.root / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bag-", dir=staging_root))
    try:
        result = write_bag_episodes(
            path,
            mapping,
            staging,
            robot_id=robot_id,
            embodiment=embodiment,
            task=task,
            outcome=outcome,
            tags=tags,
        )
        result.directories = _publish(spool, result.directories, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
