from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import WriteEpisode
from wamfleet.fleet_agent.episode_io import EpisodeReader
from wamfleet.pipelines.lerobot_v3 import (
    MANIFEST_COLUMN,
    LeRobotFormatError,
    export_lerobot,
    import_lerobot,
)
from wamfleet.platform.contracts import EmbodimentSpec

# Two lossy encodes (export, then the bundle written on import): mean absolute pixel error.
ROUND_TRIP_TOLERANCE = 8.0


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
    result = import_lerobot(tmp_path / "out", tmp_path / "back")
    assert [m.has_actions for _, m in result.bundles] == [False, False]


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
