from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WriteEpisode, frame_images
from wamfleet.fleet_agent.episode_format import BundleError
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec
from wamfleet.platform.contracts.episode import MANIFEST_FILE

# H.264 at crf 23 on synthetic gradients: the mean absolute pixel error stays small.
CODEC_TOLERANCE = 6.0


def test_round_trip_keeps_vectors_exactly_and_frames_within_codec_tolerance(
    write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> None:
    directory, manifest = write_episode(frames=30)
    assert [f.path for f in manifest.files] == ["data.parquet", "videos/front.mp4", "videos/wrist.mp4"]
    with EpisodeReader(directory) as reader:
        assert reader.num_frames == 30
        states = reader.states()
        actions = reader.actions()
        assert actions is not None
        for i in range(30):
            np.testing.assert_array_equal(states[i], np.arange(3, dtype=np.float32) + i * 0.5)
            np.testing.assert_array_equal(actions[i], np.linspace(-1, 1, 2, dtype=np.float32) * (i + 1))
        np.testing.assert_allclose(reader.timestamps(), np.arange(30) / 15, rtol=1e-6)
        for i, images in enumerate(reader.iter_frames()):
            expected = frame_images(embodiment, i)
            for cam, img in images.items():
                assert np.abs(img.astype(int) - expected[cam]).mean() < CODEC_TOLERANCE
        assert reader.table.column("next.reward").to_pylist() == [float(i) for i in range(30)]
    assert manifest.outcome.success is True


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (7, 12), (8, 9), (15, 30), (29, 30)])
def test_random_access_by_range_matches_sequential_decode(
    write_episode: WriteEpisode, start: int, stop: int
) -> None:
    directory, _ = write_episode(frames=30)
    with EpisodeReader(directory) as reader:
        everything = list(reader.iter_frames())
        chunk = reader.frames(start, stop)
        for cam in reader.cameras:
            assert chunk[cam].shape[0] == stop - start
            for k in range(stop - start):
                np.testing.assert_array_equal(chunk[cam][k], everything[start + k][cam])
        np.testing.assert_array_equal(reader.frame(start)["front"], everything[start]["front"])


def test_out_of_range_frames_raise(write_episode: WriteEpisode) -> None:
    directory, _ = write_episode(frames=5)
    with EpisodeReader(directory) as reader, pytest.raises(IndexError):
        reader.frames(3, 6)


def test_video_only_episode(write_episode: WriteEpisode) -> None:
    directory, manifest = write_episode(frames=9, video_only=True)
    assert not manifest.has_actions
    assert manifest.action_names == []
    with EpisodeReader(directory) as reader:
        assert reader.actions() is None
        assert reader.table.column("action").null_count == 9
        assert len(list(reader.iter_frames())) == 9


def test_video_is_streamed_to_disk_while_recording(tmp_path: Path) -> None:
    spec = EmbodimentSpec(
        name="cam", cameras=[CameraSpec(name="front", height=240, width=320)], fps=15, state_names=["s"]
    )
    writer = EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=spec, task="t")
    video = tmp_path / "ep" / "videos" / "front.mp4"
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(40):
        writer.add_frame({"front": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)}, [0.0])
        sizes.append(video.stat().st_size if video.exists() else 0)
    # Encoded packets reach the file as frames arrive, not at close(): memory stays bounded.
    assert sizes[-1] > sizes[20] > 0
    assert not (tmp_path / "ep" / MANIFEST_FILE).exists()
    writer.close()
    assert (tmp_path / "ep" / MANIFEST_FILE).exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": "missing-camera"}, "images: expected cameras"),
        ({"images": "wrong-shape"}, "images['front']: expected uint8 (32, 48, 3)"),
        ({"images": "wrong-dtype"}, "images['front']: expected uint8"),
        ({"state": np.zeros(4)}, "state: expected 3 values, got 4"),
        ({"action": np.zeros(3)}, "action: expected 2 values, got 3"),
        ({"action": None}, "action: required"),
    ],
)
def test_add_frame_rejects_bad_input(
    tmp_path: Path, embodiment: EmbodimentSpec, kwargs: dict[str, object], message: str
) -> None:
    images = frame_images(embodiment, 0)
    if kwargs.get("images") == "missing-camera":
        del images["wrist"]
    elif kwargs.get("images") == "wrong-shape":
        images["front"] = np.zeros((48, 32, 3), np.uint8)
    elif kwargs.get("images") == "wrong-dtype":
        images["front"] = images["front"].astype(np.float32)
    state = kwargs.get("state", np.zeros(3))
    action = kwargs["action"] if "action" in kwargs else np.zeros(2)
    with EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=embodiment, task="t") as writer:
        with pytest.raises(
            ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
        ):
            writer.add_frame(images, state, action)  # type: ignore[arg-type]
        # A rejected frame leaves the recording usable.
        writer.add_frame(frame_images(embodiment, 0), np.zeros(3), np.zeros(2))
        assert writer.close().num_frames == 1


def test_video_only_writer_refuses_actions(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    w = EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=embodiment, task="t", video_only=True)
    with pytest.raises(ValueError, match="video-only"):
        w.add_frame(frame_images(embodiment, 0), np.zeros(3), np.zeros(2))


def test_timestamps_must_increase(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    with EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=embodiment, task="t") as w:
        w.add_frame(frame_images(embodiment, 0), np.zeros(3), np.zeros(2), timestamp=1.0)
        with pytest.raises(ValueError, match="timestamp"):
            w.add_frame(frame_images(embodiment, 1), np.zeros(3), np.zeros(2), timestamp=1.0)


def test_bad_manifest_fields_fail_before_recording(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    with pytest.raises(ValueError, match=r"manifest\.robot_id"):
        EpisodeWriter(tmp_path / "ep", robot_id="../other-robot", embodiment=embodiment, task="t")
    with pytest.raises(ValueError, match=r"manifest\.task"):
        EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=embodiment, task=" ")
    assert not (tmp_path / "ep").exists()


def test_exception_inside_writer_discards_the_recording(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    def record_and_crash() -> None:
        with EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=embodiment, task="t") as w:
            w.add_frame(frame_images(embodiment, 0), np.zeros(3), np.zeros(2))
            raise RuntimeError("robot fell over")

    with pytest.raises(RuntimeError, match="robot fell over"):
        record_and_crash()
    assert not (tmp_path / "ep").exists()


def test_empty_episode_is_refused(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    writer = EpisodeWriter(tmp_path / "ep", robot_id="r", embodiment=embodiment, task="t")
    with pytest.raises(ValueError, match="no frames"):
        writer.close()


def test_finished_episode_is_not_overwritten(write_episode: WriteEpisode, embodiment: EmbodimentSpec) -> None:
    directory, _ = write_episode(frames=3)
    with pytest.raises(FileExistsError):
        EpisodeWriter(directory, robot_id="r", embodiment=embodiment, task="t")


# Damaged bundles ------------------------------------------------------------------------


def test_altered_file_fails_checksum_naming_the_file(write_episode: WriteEpisode) -> None:
    directory, _ = write_episode(frames=10)
    path = directory / "data.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^data\.parquet: sha256 .* does not match"):
        EpisodeReader(directory)


def test_truncated_mp4_is_named_by_size_check(write_episode: WriteEpisode) -> None:
    directory, _ = write_episode(frames=40)
    path = directory / "videos" / "wrist.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"^videos/wrist\.mp4: size .* \(truncated or altered\)"):
        EpisodeReader(directory)


def test_truncated_mp4_without_verification_fails_decoding_naming_the_file(
    write_episode: WriteEpisode,
) -> None:
    directory, _ = write_episode(frames=40)
    path = directory / "videos" / "wrist.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with (
        EpisodeReader(directory, verify=False) as reader,
        pytest.raises(BundleError, match=r"^videos/wrist\.mp4"),
    ):
        list(reader.iter_frames())


def test_missing_file_is_named(write_episode: WriteEpisode) -> None:
    directory, _ = write_episode(frames=5)
    (directory / "videos" / "front.mp4").unlink()
    with pytest.raises(BundleError, match=r"^videos/front\.mp4: missing"):
        EpisodeReader(directory)


def test_missing_manifest_means_no_episode(write_episode: WriteEpisode) -> None:
    directory, _ = write_episode(frames=5)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"^manifest\.json: missing"):
        EpisodeReader(directory)


def test_malformed_manifest_is_named(write_episode: WriteEpisode) -> None:
    directory, _ = write_episode(frames=5)
    (directory / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match=r"^manifest\.json: not valid JSON"):
        EpisodeReader(directory)
    data = json.loads(json.dumps({"schema_version": 1}))
    (directory / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"^manifest\.json: .*episode_id: Field required"):
        EpisodeReader(directory)


def test_parquet_row_count_must_match_manifest(write_episode: WriteEpisode, tmp_path: Path) -> None:
    directory, _ = write_episode(frames=6)
    raw = json.loads((directory / MANIFEST_FILE).read_text())
    raw["num_frames"] = 7
    (directory / MANIFEST_FILE).write_text(json.dumps(raw))
    with EpisodeReader(directory) as reader, pytest.raises(BundleError, match="6 rows, manifest says 7"):
        reader.states()
