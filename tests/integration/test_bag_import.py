"""`agent import-bag`: rosbag2 (sqlite3, MCAP storage) and plain MCAP files into spooled episodes.

The bags are written by the libraries' own writers: rosbags' Writer for rosbag2 and
mcap-ros2-support's Writer for a plain MCAP file, with the standard ROS 2 message definitions.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import httpx
import numpy as np
import pytest
import yaml
from av.video.codeccontext import VideoCodecContext
from mcap.reader import make_reader
from mcap.writer import IndexType
from mcap.writer import Writer as McapWriter
from mcap_ros2.writer import Writer as McapRos2Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Rosbag2Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore
from typer.testing import CliRunner

from tests.conftest import ADMIN
from tests.integration.api_support import settings_for
from wamfleet.fleet_agent.bag_import import (
    STAGING_DIR,
    BagError,
    BagMapping,
    import_bag,
    load_mapping,
)
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.cli.main import app
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec, Outcome
from wamfleet.platform.contracts.episode import EpisodeSource

T0 = 1_700_000_000 * 10**9  # the bag's clock: ns since the epoch
TS: Typestore = get_typestore(Stores.ROS2_HUMBLE)
# A lab's own message type: the bag carries its definition, the importer knows nothing of it.
TS.register(get_types_from_msg("float64 level\nstring label", "my_msgs/msg/Widget"))

SPEC = EmbodimentSpec(
    name="bag-arm",
    cameras=[CameraSpec(name="front", height=32, width=48), CameraSpec(name="wrist", height=32, width=32)],
    fps=10,
    state_names=["j0", "j1", "gripper"],
    action_names=["a0", "a1"],
)

MAPPING: dict[str, Any] = {
    "embodiment": "bag-arm",
    "cameras": {"front": "/front/image_raw", "wrist": "/wrist/image/compressed"},
    "state": [{"topic": "/joint_states", "names": ["j0", "j1"]}, "/gripper"],
    "action": "/cmd",
    "split": {"topic": "/episode", "gap_s": 0.5},
    "task": "stack the cubes",
    "outcome": {"success": True},
    "tags": {"operator": "ana"},
}

Msg = tuple[int, str, str, dict[str, Any]]  # (receive time ns, topic, type, fields)


def level(i: int) -> int:
    """A message's image brightness: neighbours differ a lot, so a wrong pick shows."""
    return 30 + (i * 37) % 180


def header(t: int) -> dict[str, Any]:
    return {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}, "frame_id": ""}


def compressed(value: int, fmt: str, size: int = 40) -> bytes:
    """A uniform grey JPEG or PNG image."""
    codec, pix_fmt = ("mjpeg", "yuvj420p") if fmt == "jpeg" else ("png", "rgb24")
    ctx = cast(VideoCodecContext, av.CodecContext.create(codec, "w"))
    ctx.width = ctx.height = size
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 30)
    frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), value, np.uint8), format="rgb24")
    return b"".join(bytes(p) for p in ctx.encode(frame.reformat(format=pix_fmt)))


def every(period_s: float, until_s: float) -> list[int]:
    n = round(until_s / period_s)
    return [round(k * period_s * 1e9) for k in range(n)]


def recording(
    until_s: float = 3.0,
    markers: list[tuple[float, Any]] | None = None,
    marker_type: str = "std_msgs/msg/Bool",
    hole: tuple[float, float] | None = None,
) -> list[Msg]:
    """Cameras at 20 Hz (raw bgr8) and 15 Hz (JPEG and PNG in turn), joints at 50 Hz, gripper at
    5 Hz, commands at 25 Hz; values are the message's own time (in s from the start) or a level
    derived from its index, so each held sample can be checked."""
    msgs: list[Msg] = []

    def add(period: float, topic: str, kind: str, make: Callable[[int, int], dict[str, Any]]) -> None:
        for i, rel in enumerate(every(period, until_s)):
            if hole and hole[0] * 1e9 <= rel < hole[1] * 1e9:
                continue
            msgs.append((T0 + rel, topic, kind, make(i, rel)))

    def front(i: int, rel: int) -> dict[str, Any]:  # bgr8, 48x64, padded rows
        h, w, step = 48, 64, 64 * 3 + 8
        rows = np.zeros((h, step), np.uint8)
        pixels = rows[:, : w * 3].reshape(h, w, 3)
        pixels[..., 0] = level(i)  # blue
        pixels[..., 2] = 255 - level(i)  # red
        return {
            "header": header(T0 + rel),
            "height": h,
            "width": w,
            "encoding": "bgr8",
            "is_bigendian": 0,
            "step": step,
            "data": rows.tobytes(),
        }

    add(0.05, "/front/image_raw", "sensor_msgs/msg/Image", front)
    add(
        1 / 15,
        "/wrist/image/compressed",
        "sensor_msgs/msg/CompressedImage",
        lambda i, rel: {
            "header": header(T0 + rel),
            "format": ("jpeg", "png")[i % 2],
            "data": compressed(level(i), ("jpeg", "png")[i % 2]),
        },
    )
    add(
        0.02,
        "/joint_states",
        "sensor_msgs/msg/JointState",
        lambda i, rel: {
            "header": header(T0 + rel),
            "name": ["extra", "j1", "j0"],
            "position": [-1.0, 2 * rel / 1e9, rel / 1e9],
            "velocity": [],
            "effort": [],
        },
    )
    add(0.2, "/gripper", "std_msgs/msg/Float64", lambda i, rel: {"data": rel / 1e9 + 100})
    add(
        0.04,
        "/cmd",
        "std_msgs/msg/Float64MultiArray",
        lambda i, rel: {"layout": {"dim": [], "data_offset": 0}, "data": [rel / 1e9, -rel / 1e9]},
    )
    for at, value in markers or []:
        fields = {} if marker_type == "std_msgs/msg/Empty" else {"data": value}
        msgs.append((T0 + round(at * 1e9), "/episode", marker_type, fields))
    msgs.sort(key=lambda m: m[0])
    return msgs


BOOL_MARKERS = [(0.0, True), (1.0, False), (1.5, True), (2.6, False)]


def to_rosbags(typename: str, value: Any) -> Any:
    """A plain dict as the typestore's message object (sequences of numbers as numpy arrays)."""
    fields: Any = TS.fielddefs[typename][1]
    kwargs = {}
    for name, (node, detail) in fields:
        v = value[name]
        if node.name == "NAME":
            kwargs[name] = to_rosbags(detail, v)
        elif node.name in ("SEQUENCE", "ARRAY"):
            (inner_node, inner), _ = detail
            if inner_node.name == "NAME":
                kwargs[name] = [to_rosbags(inner, x) for x in v]
            elif inner[0] == "string":
                kwargs[name] = list(v)
            elif isinstance(v, bytes):
                kwargs[name] = np.frombuffer(v, dtype=np.uint8).copy()
            else:
                kwargs[name] = np.asarray(v, dtype=inner[0])
        else:
            kwargs[name] = v
    return TS.types[typename](**kwargs)


def write_rosbag2(path: Path, msgs: list[Msg], storage: StoragePlugin) -> Path:
    with Rosbag2Writer(path, version=9, storage_plugin=storage) as writer:
        conns = {}
        for topic, kind in dict.fromkeys((m[1], m[2]) for m in msgs):
            conns[topic] = writer.add_connection(topic, kind, typestore=TS)
        for t, topic, kind, fields in msgs:
            writer.write(conns[topic], t, TS.serialize_cdr(to_rosbags(kind, fields), kind))
    return path


def write_plain_mcap(path: Path, msgs: list[Msg]) -> Path:
    with open(path, "wb") as f:
        writer = McapRos2Writer(f)
        schemas = {}
        for t, topic, kind, fields in msgs:
            if kind not in schemas:
                schemas[kind] = writer.register_msgdef(kind, TS.generate_msgdef(kind, ros_version=2)[0])
            writer.write_message(topic, schemas[kind], fields, log_time=t)
        writer.finish()
    return path


def write_streamed_mcap(path: Path, msgs: list[Msg]) -> Path:
    """An MCAP without a summary section (as a streaming recorder leaves it): read linearly."""
    with open(path, "wb") as f:
        writer = McapWriter(
            f, index_types=IndexType.NONE, repeat_channels=False, repeat_schemas=False,
            use_statistics=False, use_summary_offsets=False,
        )  # fmt: skip
        writer.start(profile="ros2")
        channels: dict[str, int] = {}
        for t, topic, kind, fields in msgs:
            if topic not in channels:
                schema = writer.register_schema(
                    kind, "ros2msg", TS.generate_msgdef(kind, ros_version=2)[0].encode()
                )
                channels[topic] = writer.register_channel(topic, "cdr", schema)
            data = bytes(TS.serialize_cdr(to_rosbags(kind, fields), kind))
            writer.add_message(channels[topic], log_time=t, data=data, publish_time=t)
        writer.finish()
    return path


WRITERS: dict[str, Callable[[Path, list[Msg]], Path]] = {
    "rosbag2-sqlite3": lambda p, m: write_rosbag2(p / "bag", m, StoragePlugin.SQLITE3),
    "rosbag2-mcap": lambda p, m: write_rosbag2(p / "bag", m, StoragePlugin.MCAP),
    "plain-mcap": lambda p, m: write_plain_mcap(p / "bag.mcap", m),
    "streamed-mcap": lambda p, m: write_streamed_mcap(p / "bag.mcap", m),
}


def mapping(**changes: Any) -> BagMapping:
    return BagMapping.model_validate({**MAPPING, **changes})


def spool_state(spool: Spool) -> tuple[dict[str, int], list[Path]]:
    return spool.counts(), list((spool.root / STAGING_DIR).glob("*"))


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_bag_becomes_aligned_episodes_in_the_spool(tmp_path: Path, kind: str) -> None:
    bag = WRITERS[kind](tmp_path, recording(markers=BOOL_MARKERS))
    spool = Spool(tmp_path / "spool")
    result = import_bag(bag, mapping(), spool, robot_id="arm-1", embodiment=SPEC)

    assert [m.num_frames for m in result.manifests] == [9, 9]
    assert spool_state(spool) == ({"recording": 0, "ready": 2, "uploaded": 0, "rejected": 0}, [])
    # Episode 1 spans [0, 0.8] s (the 5 Hz gripper's last sample before the marker closes at 1.0);
    # episode 2 starts at 1.6 s, when every topic has published since the marker opened at 1.5.
    for manifest, directory, start in zip(result.manifests, result.directories, (0.0, 1.6), strict=True):
        assert directory == spool.dir("ready", str(manifest.episode_id))
        assert manifest.task == "stack the cubes"
        assert manifest.outcome == Outcome(success=True)
        assert manifest.source is EpisodeSource.imported
        assert manifest.has_actions
        assert manifest.tags["source-file"] == bag.name
        assert manifest.tags["operator"] == "ana"
        assert manifest.started_at.timestamp() == pytest.approx(T0 / 1e9 + start, abs=1e-6)
        t = start + np.arange(9) * 0.1
        with EpisodeReader(directory) as reader:
            states, actions = reader.states(), reader.actions()
            # j0 = t and j1 = 2t, picked by name from a reordered JointState at 50 Hz; the gripper
            # holds its latest 5 Hz sample; commands at 25 Hz hold theirs (0.1 s -> 0.08 s).
            np.testing.assert_allclose(states[:, 0], t, atol=1e-5)
            np.testing.assert_allclose(states[:, 1], 2 * t, atol=1e-5)
            np.testing.assert_allclose(states[:, 2], np.floor(t / 0.2 + 1e-9) * 0.2 + 100, atol=1e-4)
            assert actions is not None
            held = np.floor(t / 0.04 + 1e-9) * 0.04
            np.testing.assert_allclose(actions, np.stack([held, -held], axis=1), atol=1e-5)
            for k, images in enumerate(reader.iter_frames()):
                assert images["front"].shape == (32, 48, 3)
                assert images["wrist"].shape == (32, 32, 3)
                front_i = round(t[k] / 0.05)
                wrist_i = int(np.floor(t[k] * 15 + 1e-9))
                # bgr8 became RGB: red carries 255 - level, blue the level
                assert abs(images["front"][..., 0].mean() - (255 - level(front_i))) < 8
                assert abs(images["front"][..., 2].mean() - level(front_i)) < 8
                assert abs(images["wrist"].mean() - level(wrist_i)) < 8


def test_time_gaps_split_episodes_and_string_markers_name_tasks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    bag = WRITERS["rosbag2-sqlite3"](tmp_path, recording(until_s=3.0, hole=(1.0, 1.7)))
    result = import_bag(
        bag, mapping(split={"gap_s": 0.5}), spool, robot_id="arm-1", embodiment=SPEC, task="wipe"
    )
    # [0, 0.8] then [1.8, 2.8]: the 0.7 s hole in every topic is longer than gap_s
    assert [m.num_frames for m in result.manifests] == [9, 11]
    assert [m.task for m in result.manifests] == ["wipe", "wipe"]  # --task overrides the mapping

    markers = [(0.0, "open the drawer"), (1.2, ""), (1.5, "close the drawer")]
    bag2 = WRITERS["plain-mcap"](tmp_path, recording(markers=markers, marker_type="std_msgs/msg/String"))
    result = import_bag(bag2, mapping(task=None), spool, robot_id="arm-1", embodiment=SPEC)
    assert [m.task for m in result.manifests] == ["open the drawer", "close the drawer"]
    assert [m.num_frames for m in result.manifests] == [11, 13]  # [0, 1.0] and [1.6, 2.8]


def test_video_only_mapping_and_receive_time_alignment(tmp_path: Path) -> None:
    bag = WRITERS["rosbag2-mcap"](tmp_path, recording(until_s=1.0))
    spool = Spool(tmp_path / "spool")
    result = import_bag(
        bag,
        mapping(action=None, split={"gap_s": None}, stamps="receive", source="teleop", min_frames=2),
        spool,
        robot_id="arm-1",
        embodiment=SPEC,
        outcome=Outcome(success=False, progress=0.5),
    )
    [manifest] = result.manifests
    assert not manifest.has_actions and manifest.action_names == []
    assert manifest.source is EpisodeSource.teleop
    assert manifest.outcome == Outcome(success=False, progress=0.5)
    assert manifest.num_frames == 9


def test_mapping_files_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(MAPPING))
    (tmp_path / "m.json").write_text(json.dumps(MAPPING))
    assert load_mapping(tmp_path / "m.yaml") == load_mapping(tmp_path / "m.json") == mapping()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**MAPPING, "cameras": {"front": 3}, "colour": 1}))
    with pytest.raises(BagError, match=r"bad\.yaml.*cameras\.front"):
        load_mapping(tmp_path / "bad.yaml")
    with pytest.raises(BagError, match=r"mapping\.cameras: embodiment 'bag-arm' has cameras"):
        mapping(cameras={"front": "/front/image_raw"}).check(SPEC)
    inline = mapping(embodiment=SPEC.model_dump(mode="json"))
    assert inline.embodiment == SPEC and inline.embodiment_name == "bag-arm"


def expect_nothing_imported(spool: Spool) -> None:
    assert spool_state(spool) == ({"recording": 0, "ready": 0, "uploaded": 0, "rejected": 0}, [])


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {"action": "/cmd_vel"},
            r"topic /cmd_vel: not in .* \(its topics: /cmd \(std_msgs/Float64MultiArray\)",
        ),
        (
            {"cameras": {"front": "/front/image_raw", "wrist": "/joint_states"}},
            r"topic /joint_states: type sensor_msgs/JointState cannot feed camera 'wrist'",
        ),
        ({"state": "/cmd"}, r"topic /cmd: message 0: has 2 values, 3 expected"),
        (
            {"state": [{"topic": "/joint_states", "names": ["j0", "j9"]}, "/gripper"]},
            r"topic /joint_states: message 0: joints \['j9'\] missing",
        ),
        ({"split": {"topic": "/gripper"}}, r"topic /gripper: type std_msgs/Float64 cannot split episodes"),
        ({"task": None}, r"task: episode 0 has none"),
    ],
)
def test_bad_mappings_name_the_topic_and_import_nothing(
    tmp_path: Path, changes: dict[str, Any], error: str
) -> None:
    bag = WRITERS["rosbag2-sqlite3"](tmp_path, recording(until_s=1.0))
    spool = Spool(tmp_path / "spool")
    with pytest.raises(BagError, match=error):
        import_bag(bag, mapping(**{"split": {}, **changes}), spool, robot_id="arm-1", embodiment=SPEC)
    expect_nothing_imported(spool)


@pytest.mark.parametrize("kind", ["rosbag2-mcap", "plain-mcap"])
def test_stamps_out_of_order_name_the_topic(tmp_path: Path, kind: str) -> None:
    msgs = recording(until_s=1.0)
    # one joint state stamped 0.3 s in the past: the robot's clock jumped back
    i = next(k for k, m in enumerate(msgs) if m[1] == "/joint_states" and m[0] == T0 + 500_000_000)
    t, topic, msgtype, fields = msgs[i]
    msgs[i] = (t, topic, msgtype, {**fields, "header": header(t - 300_000_000)})
    spool = Spool(tmp_path / "spool")
    with pytest.raises(BagError, match=r"topic /joint_states: stamps out of order at message 25"):
        import_bag(WRITERS[kind](tmp_path, msgs), mapping(split={}), spool, robot_id="a", embodiment=SPEC)
    expect_nothing_imported(spool)


def with_foreign_topics(msgs: list[Msg]) -> list[Msg]:
    """Adds a standard type the importer cannot use and a custom type it has never heard of."""
    twist: dict[str, Any] = {
        "linear": {"x": 0.0, "y": 0.0, "z": 0.0},
        "angular": {"x": 0.0, "y": 0.0, "z": 0.0},
    }
    extra: list[Msg] = [(T0, "/cmd_vel", "geometry_msgs/msg/Twist", twist)]
    extra += [(T0 + k * 10**8, "/widget", "my_msgs/msg/Widget", {"level": k, "label": "w"}) for k in range(5)]
    return sorted(msgs + extra, key=lambda m: m[0])


@pytest.mark.parametrize("kind", ["rosbag2-sqlite3", "rosbag2-mcap", "plain-mcap"])
def test_unknown_message_types_are_ignored_unless_mapped(tmp_path: Path, kind: str) -> None:
    bag = WRITERS[kind](tmp_path, with_foreign_topics(recording(until_s=1.0)))
    spool = Spool(tmp_path / "spool")
    result = import_bag(bag, mapping(split={}), spool, robot_id="a", embodiment=SPEC)
    assert [m.num_frames for m in result.manifests] == [9]  # unmapped topics are never decoded

    cases: list[tuple[dict[str, Any], str]] = [
        ({"action": "/cmd_vel"}, r"topic /cmd_vel: type geometry_msgs/Twist cannot feed mapping.action"),
        (
            {"cameras": {"front": "/front/image_raw", "wrist": "/widget"}},
            r"topic /widget: type my_msgs/Widget cannot feed camera 'wrist'; expected sensor_msgs/Image",
        ),
        ({"split": {"topic": "/widget"}}, r"topic /widget: type my_msgs/Widget cannot split episodes"),
    ]
    for changes, error in cases:
        other = Spool(tmp_path / "other")
        with pytest.raises(BagError, match=error):
            import_bag(bag, mapping(**{"split": {}, **changes}), other, robot_id="a", embodiment=SPEC)
        expect_nothing_imported(other)


def test_a_non_ros_channel_in_a_plain_mcap_names_the_topic(tmp_path: Path) -> None:
    """An MCAP from another recorder (JSON here) can hold channels no ROS 2 decoder reads."""
    bag = write_plain_mcap(tmp_path / "bag.mcap", recording(until_s=1.0))
    with open(bag, "rb") as f:
        records = f.read()
    path = tmp_path / "mixed.mcap"
    with open(path, "wb") as f:  # rewrite it with an extra JSON channel that claims a ROS type name
        writer = McapWriter(f)
        writer.start(profile="ros2")
        json_schema = writer.register_schema("sensor_msgs/msg/JointState", "jsonschema", b"{}")
        json_channel = writer.register_channel("/json_joints", "json", json_schema)
        for t in range(0, 10**9, 10**8):
            writer.add_message(json_channel, log_time=T0 + t, data=b'{"position": [0]}', publish_time=T0 + t)
        copy_messages(records, writer)
        writer.finish()
    spool = Spool(tmp_path / "spool")
    state = [{"topic": "/json_joints", "names": ["j0", "j1"]}, "/gripper"]
    with pytest.raises(BagError, match=r"topic /json_joints: 'json' messages .* are not supported"):
        import_bag(path, mapping(split={}, state=state), spool, robot_id="a", embodiment=SPEC)
    expect_nothing_imported(spool)


def copy_messages(data: bytes, writer: McapWriter) -> None:
    """Every message of an MCAP file, with its schema and channel, into another writer."""
    schema_ids: dict[int, int] = {}
    channel_ids: dict[int, int] = {}
    for schema, channel, message in make_reader(io.BytesIO(data)).iter_messages():
        assert schema is not None
        if schema.id not in schema_ids:
            schema_ids[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
        if channel.id not in channel_ids:
            channel_ids[channel.id] = writer.register_channel(
                channel.topic, channel.message_encoding, schema_ids[schema.id]
            )
        writer.add_message(
            channel_ids[channel.id],
            log_time=message.log_time,
            data=message.data,
            publish_time=message.publish_time,
        )


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_truncated_files_name_the_file_and_offset(tmp_path: Path, kind: str) -> None:
    bag = WRITERS[kind](tmp_path, recording(until_s=1.0))
    data_file = bag if bag.is_file() else next(f for f in bag.iterdir() if f.suffix in (".db3", ".mcap"))
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) * 2 // 3])
    spool = Spool(tmp_path / "spool")
    expected = {
        "rosbag2-sqlite3": r"bag/bag\.db3: truncated at byte offset \d+; its header declares \d+ bytes",
        "rosbag2-mcap": r"bag/bag\.mcap: truncated or damaged at byte offset \d+ of \d+",
        "plain-mcap": r"bag\.mcap: truncated or damaged at byte offset \d+ of \d+",
        "streamed-mcap": r"bag\.mcap: truncated or damaged at byte offset \d+ of \d+",
    }[kind]
    with pytest.raises(BagError, match=expected):
        import_bag(bag, mapping(split={}), spool, robot_id="a", embodiment=SPEC)
    expect_nothing_imported(spool)


def test_a_bad_image_late_in_the_bag_leaves_no_episode_behind(tmp_path: Path) -> None:
    msgs = recording(markers=BOOL_MARKERS)
    i = next(k for k, m in enumerate(msgs) if m[1] == "/wrist/image/compressed" and m[0] > T0 + 2 * 10**9)
    t, topic, msgtype, fields = msgs[i]
    msgs[i] = (t, topic, msgtype, {**fields, "format": "jpeg", "data": b"\xff\xd8\xff" + b"\x00" * 64})
    spool = Spool(tmp_path / "spool")
    with pytest.raises(
        BagError, match=r"topic /wrist/image/compressed: message 3\d: cannot decode its mjpeg"
    ):
        import_bag(WRITERS["plain-mcap"](tmp_path, msgs), mapping(), spool, robot_id="a", embodiment=SPEC)
    expect_nothing_imported(spool)  # episode 1 was finished, and still never reached ready/


def test_a_failed_move_to_ready_takes_back_the_episodes_moved_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bag = WRITERS["plain-mcap"](tmp_path, recording(markers=BOOL_MARKERS))
    spool = Spool(tmp_path / "spool")
    mark_ready = Spool.mark_ready
    calls = []

    def flaky(self: Spool, directory: Path) -> Path:
        calls.append(directory)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return mark_ready(self, directory)

    monkeypatch.setattr(Spool, "mark_ready", flaky)
    with pytest.raises(OSError, match="No space left"):
        import_bag(bag, mapping(), spool, robot_id="a", embodiment=SPEC)
    assert len(calls) == 2
    expect_nothing_imported(spool)


def cli_env(tmp_path: Path, **extra: str | None) -> dict[str, str | None]:
    """The agent's settings for a CLI run; no token unless given (so --no-upload is needed)."""
    return {
        "WAMFLEET_AGENT_SPOOL_DIR": str(tmp_path / "spool"),
        "WAMFLEET_AGENT_ROBOT_ID": "arm-1",
        "WAMFLEET_AGENT_TOKEN": None,
        "COLUMNS": "200",  # one line per message, so the assertions see it whole
        **extra,
    }


def inline_mapping_file(tmp_path: Path) -> Path:
    """A mapping that carries the embodiment spec, so nothing needs the platform."""
    path = tmp_path / "bag-arm.yaml"
    path.write_text(yaml.safe_dump({**MAPPING, "embodiment": SPEC.model_dump(mode="json")}))
    return path


def test_cli_import_bag(tmp_path: Path) -> None:
    bag = WRITERS["rosbag2-sqlite3"](tmp_path, recording(markers=BOOL_MARKERS))
    mapping_file = inline_mapping_file(tmp_path)
    env = cli_env(tmp_path)
    runner = CliRunner()
    args = ["agent", "import-bag", str(bag), "--mapping", str(mapping_file), "--no-upload"]
    result = runner.invoke(app, [*args, "--task", "sort the parts", "--failure"], env=env)
    assert result.exit_code == 0, result.output
    assert "imported 2 episodes" in result.output
    ready = list(Spool(tmp_path / "spool").ready())
    assert len(ready) == 2
    for directory in ready:
        with EpisodeReader(directory) as reader:
            assert reader.manifest.task == "sort the parts"
            assert reader.manifest.outcome == Outcome(success=False)  # --failure over the mapping's success

    mapping_file.write_text(mapping_file.read_text().replace("/cmd\n", "/nope\n"))
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2
    assert "topic /nope: not in bag" in result.output
    assert len(list(Spool(tmp_path / "spool").ready())) == 2  # the failed run added nothing


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--no-upload"], {}, "Missing option '--mapping'"),
        (["--mapping", "{missing}", "--no-upload"], {}, "missing.yaml: cannot read the mapping"),
        (["--mapping", "{mapping}", "--no-upload", "--succes"], {}, "No such option: --succes"),
        (["--mapping", "{mapping}"], {}, "token: set WAMFLEET_AGENT_TOKEN"),
        (
            ["--mapping", "{mapping}", "--no-upload"],
            {"WAMFLEET_AGENT_ROBOT_ID": None},
            "robot_id: pass --robot-id or set WAMFLEET_AGENT_ROBOT_ID",
        ),
        (
            ["--mapping", "{mapping}", "--no-upload", "--robot-id", "Arm 1"],
            {},
            "robot_id: 'Arm 1' is not an id",
        ),
    ],
)
def test_cli_import_bag_names_a_bad_option(
    tmp_path: Path, args: list[str], env: dict[str, str | None], message: str
) -> None:
    values = {"mapping": str(inline_mapping_file(tmp_path)), "missing": str(tmp_path / "missing.yaml")}
    args = [a.format(**values) for a in args]
    result = CliRunner().invoke(
        app, ["agent", "import-bag", str(tmp_path / "bag"), *args], env=cli_env(tmp_path, **env)
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_import_bag_names_a_missing_bag(tmp_path: Path) -> None:
    args = [
        "agent",
        "import-bag",
        str(tmp_path / "nope.mcap"),
        "--mapping",
        str(inline_mapping_file(tmp_path)),
    ]
    result = CliRunner().invoke(app, [*args, "--no-upload"], env=cli_env(tmp_path))
    assert result.exit_code == 2
    assert "nope.mcap: no such bag" in result.output
    assert not (tmp_path / "spool" / "ready").exists() or not list(Spool(tmp_path / "spool").ready())


def test_cli_import_bag_fetches_the_embodiment_and_uploads(tmp_path: Path) -> None:
    """The mapping names a registered embodiment; the robot's token fetches it and uploads."""
    app_ = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}"))
    with serve_in_thread(app_) as url:
        httpx.post(
            f"{url}/v1/embodiments", json=SPEC.model_dump(mode="json"), headers=ADMIN
        ).raise_for_status()
        robot = httpx.post(
            f"{url}/v1/robots", json={"robot_id": "arm-1", "embodiment": "bag-arm"}, headers=ADMIN
        )
        bag = WRITERS["rosbag2-mcap"](tmp_path, recording(markers=BOOL_MARKERS))
        mapping_file = tmp_path / "bag-arm.json"
        mapping_file.write_text(json.dumps(MAPPING))
        env = cli_env(tmp_path, WAMFLEET_AGENT_API_URL=url, WAMFLEET_AGENT_TOKEN=robot.json()["token"])
        args = ["agent", "import-bag", str(bag), "--mapping", str(mapping_file)]
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "uploaded and committed" in result.output
        items = httpx.get(f"{url}/v1/episodes", headers=ADMIN).json()["items"]
        assert sorted(i["num_frames"] for i in items) == [9, 9]
        assert {i["task"] for i in items} == {"stack the cubes"}

        other = cli_env(tmp_path, WAMFLEET_AGENT_API_URL=url, WAMFLEET_AGENT_TOKEN="wfr_not-a-token")
        result = CliRunner().invoke(app, [*args, "--no-upload"], env=other)
        assert result.exit_code == 2
        assert "embodiment: cannot fetch 'bag-arm' from the platform" in result.output
