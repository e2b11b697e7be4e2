"""`data export-mcap`: an episode as an MCAP file with Foxglove schemas, read back with `mcap`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.CompressedVideo_pb2 import CompressedVideo
from foxglove_schemas_protobuf.JointStates_pb2 import JointStates
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mcap.reader import make_reader
from typer.testing import CliRunner

from tests.conftest import WriteEpisode
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.mcap_export import (
    ACTION_TOPIC,
    METADATA_NAME,
    STATE_TOPIC,
    camera_topic,
    export_mcap,
    frame_times_ns,
)
from wamfleet.platform.cli.main import app
from wamfleet.platform.storage import LocalObjectStore
from wamfleet.platform.storage.bundles import upload_bundle


def read_mcap(
    path: Path,
) -> tuple[dict[str, tuple[str, str]], dict[str, list[Any]], dict[str, dict[str, str]]]:
    """Channels (topic -> schema name, encoding), messages per topic, metadata records."""
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        channels = {
            ch.topic: (summary.schemas[ch.schema_id].name, summary.schemas[ch.schema_id].encoding)
            for ch in summary.channels.values()
        }
        messages: dict[str, list[Any]] = {topic: [] for topic in channels}
        for schema, channel, message in reader.iter_messages():
            assert schema is not None and channel.message_encoding == "protobuf"
            messages[channel.topic].append((schema, message))
        metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
    return channels, messages, metadata


def decode_with_schema(schema: Any, data: bytes) -> Any:
    """Decodes from the file's own FileDescriptorSet, as Foxglove does (no compiled classes)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(schema.data)
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
    return cls.FromString(data)


def test_episode_exports_as_foxglove_mcap(write_episode: WriteEpisode, tmp_path: Path) -> None:
    directory, manifest = write_episode(frames=12)
    out = tmp_path / "episode.mcap"
    result = export_mcap(directory, out)
    assert result.camera_formats == {"front": "h264", "wrist": "h264"}

    channels, messages, metadata = read_mcap(out)
    assert channels == {
        camera_topic("front"): ("foxglove.CompressedVideo", "protobuf"),
        camera_topic("wrist"): ("foxglove.CompressedVideo", "protobuf"),
        STATE_TOPIC: ("foxglove.JointStates", "protobuf"),
        ACTION_TOPIC: ("foxglove.JointStates", "protobuf"),
    }
    assert {topic: len(msgs) for topic, msgs in messages.items()} == dict.fromkeys(channels, 12)
    assert result.messages == dict.fromkeys(channels, 12)
    assert metadata[METADATA_NAME]["episode_id"] == str(manifest.episode_id)
    assert metadata[METADATA_NAME]["task"] == manifest.task

    with EpisodeReader(directory) as reader:
        times = frame_times_ns(manifest, reader.timestamps())
        states, actions = reader.states(), reader.actions()
        originals = {cam: reader.frames(0, 12, [cam])[cam] for cam in reader.cameras}
    start_ns = round(manifest.started_at.timestamp() * 1e6) * 1000
    assert times[0] == start_ns and times[-1] == start_ns + round(11 / manifest.fps * 1e9)
    for msgs in messages.values():
        assert [m.log_time for _, m in msgs] == times.tolist()
    for k, (schema, message) in enumerate(messages[STATE_TOPIC]):
        state = decode_with_schema(schema, message.data)
        assert [j.name for j in state.joints] == manifest.state_names
        np.testing.assert_allclose([j.position for j in state.joints], states[k], rtol=1e-6)
        assert state.timestamp.ToNanoseconds() == times[k]
    assert actions is not None
    for k, (_, message) in enumerate(messages[ACTION_TOPIC]):
        action = JointStates.FromString(message.data)
        assert [j.name for j in action.joints] == manifest.action_names
        np.testing.assert_allclose([j.position for j in action.joints], actions[k], rtol=1e-6)

    for cam in ("front", "wrist"):
        videos = [CompressedVideo.FromString(m.data) for _, m in messages[camera_topic(cam)]]
        assert {(v.format, v.frame_id) for v in videos} == {("h264", cam)}
        assert [v.timestamp.ToNanoseconds() for v in videos] == times.tolist()
        assert videos[0].data.startswith(b"\x00\x00\x00\x01")  # Annex B, one access unit per message
        decoder = av.CodecContext.create("h264", "r")
        decoded = []
        for video in videos:
            decoded += decoder.decode(av.Packet(video.data))
        decoded += decoder.decode(None)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in decoded])
        np.testing.assert_array_equal(frames, originals[cam])  # remuxed, not re-encoded


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_images_per_frame(write_episode: WriteEpisode, tmp_path: Path, fmt: str) -> None:
    directory, _ = write_episode(frames=5, video_only=True)
    out = tmp_path / "episode.mcap"
    export_mcap(directory, out, images=fmt)  # type: ignore[arg-type]
    channels, messages, _ = read_mcap(out)
    assert ACTION_TOPIC not in channels  # video-only: no actions
    assert channels[camera_topic("front")] == ("foxglove.CompressedImage", "protobuf")
    with EpisodeReader(directory) as reader:
        originals = reader.frames(0, 5, ["front"])["front"]
    images = [CompressedImage.FromString(m.data) for _, m in messages[camera_topic("front")]]
    assert [i.format for i in images] == [fmt] * 5
    for image, original in zip(images, originals, strict=True):
        decoder = av.CodecContext.create("mjpeg" if fmt == "jpeg" else "png", "r")
        [frame] = decoder.decode(av.Packet(image.data))
        pixels = frame.to_ndarray(format="rgb24")
        assert pixels.shape == original.shape
        if fmt == "png":
            np.testing.assert_array_equal(pixels, original)
        else:
            assert np.abs(pixels.astype(int) - original).mean() < 8


def test_cli_exports_a_directory_or_an_id_from_the_store(write_episode: WriteEpisode, tmp_path: Path) -> None:
    directory, manifest = write_episode(frames=4)
    env = {"WAMFLEET_DATA_DIR": str(tmp_path / "data"), "WAMFLEET_STORAGE_BACKEND": "local"}
    runner = CliRunner()
    out = tmp_path / "a.mcap"
    result = runner.invoke(app, ["data", "export-mcap", str(directory), str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert (
        read_mcap(out)[1][STATE_TOPIC][0][1].log_time == frame_times_ns(manifest, np.zeros(1, np.float32))[0]
    )

    again = runner.invoke(app, ["data", "export-mcap", str(directory), str(out)], env=env)
    assert again.exit_code == 2 and "--force" in again.output

    store = LocalObjectStore(tmp_path / "data" / "objects")
    upload_bundle(store, directory)
    by_id = tmp_path / "b.mcap"
    result = runner.invoke(app, ["data", "export-mcap", str(manifest.episode_id), str(by_id)], env=env)
    assert result.exit_code == 0, result.output
    assert by_id.read_bytes() == out.read_bytes()

    missing = runner.invoke(
        app,
        ["data", "export-mcap", "0190a8f2-0000-7000-8000-000000000000", str(tmp_path / "c.mcap")],
        env=env,
    )
    assert missing.exit_code == 2 and "0190a8f2-0000-7000-8000-000000000000" in missing.output
    assert not list(tmp_path.glob(".*.partial"))


def reencode_with_b_frames(video: Path) -> None:
    """The same frames as H.264 with B-frames (as other encoders write): packets out of order."""
    with av.open(str(video)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
        rate = src.streams.video[0].average_rate
    with av.open(str(video), "w") as dst:
        # b-adapt=0: B-frames always, whatever the content
        stream = dst.add_stream("libx264", rate=rate, options={"x264opts": "bframes=3:b-adapt=0"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        dst.mux(stream.encode(None))


def test_h264_with_b_frames_goes_out_as_images(write_episode: WriteEpisode, tmp_path: Path) -> None:
    directory, _ = write_episode(frames=12)
    reencode_with_b_frames(directory / "videos" / "front.mp4")
    result = export_mcap(directory, tmp_path / "a.mcap", verify=False)
    assert result.camera_formats == {"front": "jpeg", "wrist": "h264"}
    assert read_mcap(tmp_path / "a.mcap")[0][camera_topic("front")][0] == "foxglove.CompressedImage"
    with pytest.raises(ValueError, match=r"front\.mp4: not H\.264 without B-frames"):
        export_mcap(directory, tmp_path / "b.mcap", images="h264", verify=False)
    assert not (tmp_path / "b.mcap").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{bundle}", "{out}", "--images", "gif"],
            "--images: expected one of auto, h264, jpeg, png, got 'gif'",
        ),
        (
            ["not-an-episode", "{out}"],
            "EPISODE: 'not-an-episode' is neither a bundle directory nor an episode id",
        ),
        (["{bundle}", "{dir}"], "is a directory; give a file name"),
        (["{bundle}", "{dir}/no/such/dir/a.mcap"], "No such file or directory"),
        (["{bundle}"], "Missing argument 'out'"),
    ],
)
def test_cli_names_a_bad_argument(
    write_episode: WriteEpisode, tmp_path: Path, args: list[str], message: str
) -> None:
    directory, _ = write_episode(frames=2)
    values = {"bundle": str(directory), "out": str(tmp_path / "x.mcap"), "dir": str(tmp_path)}
    env = {"WAMFLEET_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["data", "export-mcap", *[a.format(**values) for a in args]], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not list(tmp_path.rglob("*.mcap")) and not list(tmp_path.rglob(".*.partial"))
