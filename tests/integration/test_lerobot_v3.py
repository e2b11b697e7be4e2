from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.conftest import WriteEpisode, frame_images
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.pipelines.lerobot_export import export_lerobot
from wamfleet.pipelines.lerobot_import import import_lerobot
from wamfleet.pipelines.lerobot_v3 import (
    MANIFEST_COLUMN,
    STAT_KEYS,
    LeRobotFormatError,
    aggregate_stats,
    feature_stats,
    image_sample_indices,
    image_stats,
)
from wamfleet.platform.cli.main import app
from wamfleet.platform.contracts import EmbodimentSpec, Outcome
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import open_object_store

# Two lossy encodes (export, then the bundle written on import): mean absolute pixel error.
ROUND_TRIP_TOLERANCE = 8.0
# Written by LeRobot 0.6.1 itself (scripts/make_lerobot_fixture.py): 2 episodes, 2 AV1 cameras.
LEROBOT_WRITTEN = Path(__file__).parents[1] / "fixtures" / "lerobot_written"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
# Image stats after LeRobot's AV1 (CRF 30) and our H.264, on [0, 1] pixels.
IMAGE_STATS_TOLERANCE = 0.07


@pytest.fixture(scope="module")
def written() -> ModuleType:
    """The script that wrote the fixture: its numpy functions say what every frame holds."""
    path = Path(__file__).parents[2] / "scripts" / "make_lerobot_fixture.py"
    spec = importlib.util.spec_from_file_location("make_lerobot_fixture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stats_json(root: Path) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = json.loads((root / "meta" / "stats.json").read_text())
    return stats


def _assert_every_feature_has_stats(root: Path) -> None:
    """stats.json and every meta/episodes row hold all of LeRobot's stats for every feature."""
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    assert set(_stats_json(root)) == set(features)
    expected = {f"stats/{key}/{name}" for key in features for name in STAT_KEYS}
    for row in pq.read_table(root / EPISODES_FILE).to_pylist():
        assert expected <= set(row), sorted(expected - set(row))
        assert all(row[column] is not None for column in expected)


@pytest.fixture
def dataset(
    tmp_path: Path, write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> tuple[Path, list[Path]]:
    bundles = [
        write_episode(frames=10, task="stack the blocks")[0],
        write_episode(frames=14, task="open the drawer", robot_id="robot-2")[0],
        write_episode(frames=7, task="stack the blocks")[0],
    ]
    out = tmp_path / "lerobot"
    export_lerobot(bundles, out, embodiment)
    return out, bundles


def test_export_writes_the_v3_layout(dataset: tuple[Path, list[Path]], embodiment: EmbodimentSpec) -> None:
    root, _ = dataset
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 31, 2)
    assert info["fps"] == 15
    features = info["features"]
    assert features["observation.images.front"]["dtype"] == "video"
    assert features["observation.images.front"]["shape"] == [32, 48, 3]
    assert features["observation.state"] == {"dtype": "float32", "shape": [3], "names": ["j0", "j1", "j2"]}
    assert features["action"]["shape"] == [2]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in features
    assert (root / "data/chunk-000/file-000.parquet").exists()
    assert (root / "videos/observation.images.wrist/chunk-000/file-000.mp4").exists()

    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    assert tasks.index.name == "task"
    assert tasks.loc["open the drawer", "task_index"] == 1

    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == [10, 14, 7]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (0, 10),
        (10, 24),
        (24, 31),
    ]
    assert episodes[1]["videos/observation.images.front/from_timestamp"] == pytest.approx(10 / 15)
    assert episodes[1]["videos/observation.images.front/to_timestamp"] == pytest.approx(24 / 15)
    assert episodes[2]["tasks"] == ["stack the blocks"]

    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(31))
    assert data.column("frame_index").to_pylist()[10:12] == [0, 1]
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert stats["observation.state"]["count"] == [31]
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_round_trip_keeps_vectors_exactly_and_frames_within_tolerance(
    dataset: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, originals = dataset
    result = import_lerobot(root, tmp_path / "imported")
    assert len(result.bundles) == 3
    for (directory, manifest), original_dir in zip(result.bundles, originals, strict=True):
        with EpisodeReader(original_dir) as before, EpisodeReader(directory) as after:
            # Identity, outcome and provenance survive the trip.
            for field in ("episode_id", "robot_id", "task", "outcome", "source", "started_at", "tags"):
                assert getattr(after.manifest, field) == getattr(before.manifest, field)
            np.testing.assert_array_equal(after.states(), before.states())
            np.testing.assert_array_equal(after.actions(), before.actions())
            assert (
                after.table.column("next.reward").to_pylist()
                == before.table.column("next.reward").to_pylist()
            )
            for a, b in zip(after.iter_frames(), before.iter_frames(), strict=True):
                for cam in a:
                    assert np.abs(a[cam].astype(int) - b[cam]).mean() < ROUND_TRIP_TOLERANCE
        assert manifest.has_actions


def test_foreign_dataset_imports_with_defaults(dataset: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, _ = dataset
    foreign = tmp_path / "foreign"
    shutil.copytree(root, foreign)
    info = json.loads((foreign / "meta" / "info.json").read_text())
    del info["wamfleet"]
    info["robot_type"] = "Koch Arm"
    (foreign / "meta" / "info.json").write_text(json.dumps(info))
    episodes_file = foreign / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(episodes_file).drop_columns([MANIFEST_COLUMN]), episodes_file)

    result = import_lerobot(foreign, tmp_path / "imported", robot_id="lab-arm")
    assert result.embodiment.name == "koch-arm"
    assert [c.name for c in result.embodiment.cameras] == ["front", "wrist"]
    assert [m.robot_id for _, m in result.bundles] == ["lab-arm"] * 3
    assert [m.source for _, m in result.bundles] == ["imported"] * 3
    assert [m.task for _, m in result.bundles] == ["stack the blocks", "open the drawer", "stack the blocks"]


def test_video_only_episodes_export_without_action_feature(
    tmp_path: Path, write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> None:
    bundles = [write_episode(frames=5, video_only=True)[0], write_episode(frames=6, video_only=True)[0]]
    info = export_lerobot(bundles, tmp_path / "out", embodiment)
    assert "action" not in info["features"]
    _assert_every_feature_has_stats(tmp_path / "out")
    result = import_lerobot(tmp_path / "out", tmp_path / "back")
    assert [m.has_actions for _, m in result.bundles] == [False, False]


def test_episodes_without_rewards_get_stats_for_every_feature_they_export(
    tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    bundles = []
    for e, length in enumerate((4, 6)):
        bundles.append(tmp_path / f"bundle-{e}")
        with EpisodeWriter(bundles[-1], robot_id="r", embodiment=embodiment, task="wipe") as writer:
            for i in range(length):
                state = np.full(embodiment.state_dim, i, dtype=np.float32)
                action = np.zeros(embodiment.action_dim, dtype=np.float32)
                writer.add_frame(frame_images(embodiment, i), state, action, intervention=i == 1)
            writer.close(Outcome())
    info = export_lerobot(bundles, tmp_path / "out", embodiment)
    assert "next.reward" not in info["features"] and "next.success" not in info["features"]
    _assert_every_feature_has_stats(tmp_path / "out")
    stats = _stats_json(tmp_path / "out")
    assert stats["intervention"]["mean"] == pytest.approx([2 / 10])
    assert stats["intervention"]["count"] == [10]
    rows = pq.read_table(tmp_path / "out" / EPISODES_FILE).to_pylist()
    assert [r["stats/intervention/mean"][0] for r in rows] == pytest.approx([1 / 4, 1 / 6])
    assert [r["stats/observation.state/max"] for r in rows] == [[3.0] * 3, [5.0] * 3]


def test_mixed_embodiments_are_refused(
    tmp_path: Path, write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> None:
    bundles = [write_episode(frames=3)[0], write_episode(frames=3, video_only=True)[0]]
    with pytest.raises(ValueError, match="one embodiment"):
        export_lerobot(bundles, tmp_path / "out", embodiment)


def test_export_refuses_non_empty_target(
    tmp_path: Path, write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_lerobot([write_episode(frames=2)[0]], tmp_path / "out", embodiment)


def test_import_errors_name_the_problem(dataset: tuple[Path, list[Path]], tmp_path: Path) -> None:
    with pytest.raises(LeRobotFormatError, match=r"meta/info\.json: missing"):
        import_lerobot(tmp_path / "nothing-here", tmp_path / "x")
    root, _ = dataset
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    info = json.loads((broken / "meta" / "info.json").read_text())
    (broken / "meta" / "info.json").write_text(json.dumps(info | {"codebase_version": "v2.1"}))
    with pytest.raises(LeRobotFormatError, match=r"only v3\.0"):
        import_lerobot(broken, tmp_path / "x")
    (broken / "meta" / "info.json").write_text(json.dumps(info))
    (broken / "videos/observation.images.front/chunk-000/file-000.mp4").unlink()
    with pytest.raises(
        LeRobotFormatError, match=r"observation\.images\.front/chunk-000/file-000\.mp4: missing"
    ):
        import_lerobot(broken, tmp_path / "y")


def test_files_roll_over_by_size_and_still_import(
    tmp_path: Path, write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> None:
    bundles = [write_episode(frames=6)[0], write_episode(frames=8)[0], write_episode(frames=5)[0]]
    root = tmp_path / "out"
    export_lerobot(bundles, root, embodiment, data_file_mb=1e-6, video_file_mb=1e-6)
    assert len(list((root / "data/chunk-000").glob("file-*.parquet"))) == 3
    assert len(list((root / "videos/observation.images.front/chunk-000").glob("file-*.mp4"))) == 3
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["data/file_index"] for e in episodes] == [0, 1, 2]
    assert [e["videos/observation.images.front/from_timestamp"] for e in episodes] == [0.0, 0.0, 0.0]
    result = import_lerobot(root, tmp_path / "back")
    assert [m.num_frames for _, m in result.bundles] == [6, 8, 5]


def test_lerobot_written_dataset_imports_frames_states_actions_and_tasks(
    tmp_path: Path, written: ModuleType
) -> None:
    result = import_lerobot(LEROBOT_WRITTEN, tmp_path / "imported", robot_id="so101-lab")
    spec = result.embodiment
    assert spec.name == written.ROBOT_TYPE
    assert [(c.name, c.height, c.width) for c in spec.cameras] == [
        (cam, written.HEIGHT, written.WIDTH) for cam in written.CAMERAS
    ]
    assert spec.fps == written.FPS
    assert spec.state_names == spec.action_names == written.JOINTS
    assert len(result.bundles) == len(written.EPISODES)
    for ep, ((directory, manifest), (length, task)) in enumerate(
        zip(result.bundles, written.EPISODES, strict=True)
    ):
        assert (manifest.task, manifest.num_frames, manifest.robot_id) == (task, length, "so101-lab")
        assert manifest.source == "imported" and manifest.has_actions
        # No manifest travels with LeRobot's data: the outcome comes from the frames.
        assert manifest.outcome == Outcome(success=True, interventions=1)
        with EpisodeReader(directory) as reader:
            np.testing.assert_array_equal(reader.states(), [written.state(ep, i) for i in range(length)])
            np.testing.assert_array_equal(reader.actions(), [written.action(ep, i) for i in range(length)])
            table = reader.table
            np.testing.assert_allclose(
                table.column("next.reward").to_pylist(), [written.reward(i, length) for i in range(length)]
            )
            assert table.column("next.success").to_pylist() == [i == length - 1 for i in range(length)]
            assert table.column("intervention").to_pylist() == [
                written.intervention(i) for i in range(length)
            ]
            frames = list(reader.iter_frames())
        assert len(frames) == length
        for i, images in enumerate(frames):
            for k, cam in enumerate(written.CAMERAS):
                error = np.abs(images[cam].astype(int) - written.image(ep, i, k)).mean()
                assert error < ROUND_TRIP_TOLERANCE, (ep, i, cam, error)


def test_export_has_the_stats_and_episode_columns_lerobot_writes(
    dataset: tuple[Path, list[Path]],
) -> None:
    """Same feature names as the fixture (cameras front and wrist, reward, success,
    intervention): every stat, every meta/episodes column and its type must be LeRobot's."""
    ours, _ = dataset
    theirs = LEROBOT_WRITTEN
    our_info = json.loads((ours / "meta" / "info.json").read_text())
    their_info = json.loads((theirs / "meta" / "info.json").read_text())
    assert list(our_info["features"]) == list(their_info["features"])
    for key, feature in their_info["features"].items():
        assert our_info["features"][key]["dtype"] == feature["dtype"], key

    _assert_every_feature_has_stats(ours)
    _assert_every_feature_has_stats(theirs)
    our_stats, their_stats = _stats_json(ours), _stats_json(theirs)
    assert set(our_stats) == set(their_stats) == set(their_info["features"])
    for key, stats in their_stats.items():
        assert list(our_stats[key]) == list(stats) == list(STAT_KEYS), key
        dims = our_info["features"][key]["shape"]
        for name, value in our_stats[key].items():
            shape = np.shape(value)
            if name == "count":
                assert shape == np.shape(stats[name]) == (1,)
            elif key.startswith("observation.images."):
                assert shape == np.shape(stats[name]) == (3, 1, 1), (key, name)
            else:
                assert shape == (dims[0],), (key, name)

    our_columns = pq.read_schema(ours / EPISODES_FILE)
    their_columns = pq.read_schema(theirs / EPISODES_FILE)
    assert [n for n in our_columns.names if n != MANIFEST_COLUMN] == their_columns.names
    for name in their_columns.names:
        assert our_columns.field(name).type == their_columns.field(name).type, name
    assert {n.split("/")[1] for n in their_columns.names if n.startswith("stats/")} == set(their_stats)
    our_data = pq.read_schema(ours / "data/chunk-000/file-000.parquet")
    their_data = pq.read_schema(theirs / "data/chunk-000/file-000.parquet")

    def kind(t: pa.DataType) -> object:  # vector widths differ between the two embodiments
        return (t.id, t.value_type) if pa.types.is_fixed_size_list(t) else t

    assert [(f.name, kind(f.type)) for f in our_data] == [(f.name, kind(f.type)) for f in their_data]


def test_stats_reproduce_lerobots_numbers_on_its_own_frames(written: ModuleType) -> None:
    """LeRobot computed the fixture's stats from the frames `written` makes (before encoding);
    ours, from the same values, must be the same numbers, per episode and for the dataset. Only
    image mean and std differ, by LeRobot's float32 sums (ours are exact)."""

    def same(ours: Any, theirs: Any, key: str, name: str) -> None:
        inexact = key.startswith("observation.images.") and name in ("mean", "std")
        np.testing.assert_allclose(
            ours, theirs, rtol=0 if inexact else 1e-7, atol=1e-4 if inexact else 0, err_msg=f"{key}/{name}"
        )

    episodes = pq.read_table(LEROBOT_WRITTEN / EPISODES_FILE).to_pylist()
    data = pq.read_table(LEROBOT_WRITTEN / "data/chunk-000/file-000.parquet")
    per_episode = []
    for ep in episodes:
        e, n = ep["episode_index"], ep["length"]
        frames = data.slice(ep["dataset_from_index"], n)
        stats = {
            f"observation.images.{cam}": image_stats([written.image(e, i, k) for i in range(n)])
            for k, cam in enumerate(written.CAMERAS)
        }
        for key in ("observation.state", "action"):
            stats[key] = feature_stats(np.asarray(frames.column(key).to_pylist(), dtype=np.float32))
        for key in ("next.reward", "next.success", "intervention", "frame_index", "episode_index", "index"):
            stats[key] = feature_stats(frames.column(key).to_numpy().reshape(n, 1))
        stats["task_index"] = feature_stats(frames.column("task_index").to_numpy().reshape(n, 1))
        # LeRobot's timestamp stats are of frame_index / fps in float64, not the float32 column.
        stats["timestamp"] = feature_stats(np.arange(n, dtype=np.float64).reshape(n, 1) / written.FPS)
        per_episode.append(stats)
        for key, values in stats.items():
            for name, value in values.items():
                same(value, ep[f"stats/{key}/{name}"], key, name)
    for key, expected in _stats_json(LEROBOT_WRITTEN).items():
        ours = aggregate_stats([s[key] for s in per_episode])
        for name, value in expected.items():
            same(ours[name], value, key, name)


def test_one_frame_and_long_episodes_follow_lerobots_rules() -> None:
    one = feature_stats(np.array([[2.0, -1.0]], dtype=np.float32))
    assert one["count"].tolist() == [1] and one["std"].tolist() == [0.0, 0.0]
    assert one["q01"].tolist() == one["q99"].tolist() == [2.0, -1.0]
    # LeRobot samples image frames: all up to 100, then about n ** 0.75 (177 of 1000).
    assert image_sample_indices(40) == list(range(40))
    sampled = image_sample_indices(1000)
    assert (len(sampled), sampled[0], sampled[-1]) == (177, 0, 999)


def test_lerobot_dataset_through_wamfleet_and_back_keeps_its_stats(tmp_path: Path) -> None:
    imported = import_lerobot(LEROBOT_WRITTEN, tmp_path / "bundles")
    out = tmp_path / "exported"
    export_lerobot([d for d, _ in imported.bundles], out, imported.embodiment)
    ours, theirs = _stats_json(out), _stats_json(LEROBOT_WRITTEN)
    assert set(ours) == set(theirs)
    for key, stats in theirs.items():
        image = key.startswith("observation.images.")
        for name, value in stats.items():
            np.testing.assert_allclose(
                ours[key][name],
                value,
                rtol=0 if image else 1e-7,
                atol=IMAGE_STATS_TOLERANCE if image and name != "count" else 0,
                err_msg=f"{key}/{name}",
            )
    episodes = pq.read_table(out / EPISODES_FILE).to_pylist()
    original = pq.read_table(LEROBOT_WRITTEN / EPISODES_FILE).to_pylist()
    for ours_ep, theirs_ep in zip(episodes, original, strict=True):
        for column in ("length", "tasks", "stats/action/q99", "stats/intervention/mean"):
            assert ours_ep[column] == pytest.approx(theirs_ep[column]), column


def test_cli_imports_the_lerobot_written_dataset_into_the_store(tmp_path: Path, written: ModuleType) -> None:
    """The docs' example: `wamfleet data import-lerobot DIR --robot-id ...` on LeRobot's own files."""
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        ["data", "import-lerobot", str(LEROBOT_WRITTEN), "--robot-id", "so101-lab"],
        env={"WAMFLEET_DATA_DIR": str(data_dir), "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert f"imported {len(written.EPISODES)} episodes" in result.output
    store = open_object_store(Settings(data_dir=data_dir))
    manifests = [i.key for i in store.list("episodes/so101-lab/") if i.key.endswith("/manifest.json")]
    assert len(manifests) == len(written.EPISODES)
