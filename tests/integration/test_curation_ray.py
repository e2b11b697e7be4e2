"""Curation on real Meta-World episodes, in-process and through Ray Data on a local Ray.

Scripted-expert episodes (action noise 0.1, different layout seeds) must pass every filter
and stay apart; a planted copy of one (re-encoded) and of another (pixel noise) must be
found as near-duplicates of their originals. Ray Data with two workers must give exactly the
dataset the sequential baseline gives.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_curation import episode_id, snapshot_entry, write_blob_episode
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.sim.expert import record_expert_episode
from wamfleet.fleet_agent.sim.fleet import layout_seed
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.pipelines.curate import curate
from wamfleet.pipelines.curate_quality import analyse_episode, cosine
from wamfleet.pipelines.ray_runtime import ensure_ray
from wamfleet.platform.contracts.curation import CuratedDataset, CurationRecipe
from wamfleet.platform.contracts.dataset import DatasetSnapshot, SnapshotQuery
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import LocalObjectStore
from wamfleet.platform.storage.bundles import upload_bundle

# starts a local Ray cluster; `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

RECIPE = CurationRecipe()
EXPERTS = {"reach-v3": 3, "push-v3": 2}  # task -> episodes, each on its own layout


def planted_copy(
    source: Path, directory: Path, *, crf: int = 23, pixel_noise: int = 0, seed: int = 0
) -> None:
    """The same episode uploaded again: re-encoded at another quality, or with noise on its pixels."""
    rng = np.random.default_rng(seed)
    with EpisodeReader(source) as reader:
        manifest = reader.manifest
        frames = reader.frames(0, reader.num_frames)
        states, actions = reader.states(), reader.actions()
        embodiment = sawyer_embodiment(manifest.cameras[0].height, tuple(reader.cameras))
        with EpisodeWriter(
            directory,
            robot_id=manifest.robot_id,
            embodiment=embodiment,
            task=manifest.task,
            source=manifest.source,
            site=manifest.site,
            tags=manifest.tags,
            crf=crf,
        ) as writer:
            for i in range(reader.num_frames):
                images = {c: f[i] for c, f in frames.items()}
                if pixel_noise:
                    images = {
                        c: np.clip(
                            img.astype(np.int16) + rng.integers(-pixel_noise, pixel_noise + 1, img.shape),
                            0,
                            255,
                        ).astype(np.uint8)
                        for c, img in images.items()
                    }
                writer.add_frame(images, states[i], None if actions is None else actions[i])
            writer.close(manifest.outcome)


@dataclass
class Fleet:
    settings: Settings
    snapshot: DatasetSnapshot
    ok_ids: set[str]
    bundles: dict[str, Path]  # name -> local bundle directory


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    root = tmp_path_factory.mktemp("curation")
    bundles: dict[str, Path] = {}
    for task, count in EXPERTS.items():
        robot = MetaWorldRobot(task, image_size=64)
        try:
            for k in range(count):
                name = f"{task}-{k}"
                bundles[name] = root / "bundles" / name
                record_expert_episode(
                    robot, bundles[name], robot_id="sim-1", seed=layout_seed(0, "sim-1", k), max_steps=60
                )
        finally:
            robot.close()
    bundles["reach-v3-0-re-encoded"] = root / "bundles" / "re-encoded"
    planted_copy(bundles["reach-v3-0"], bundles["reach-v3-0-re-encoded"], crf=32)
    bundles["push-v3-1-noisy"] = root / "bundles" / "noisy"
    planted_copy(bundles["push-v3-1"], bundles["push-v3-1-noisy"], pixel_noise=3)
    bundles["frozen"] = root / "bundles" / "frozen"
    write_blob_episode(bundles["frozen"], seed=1, defect="frozen")
    bundles["video-only"] = root / "bundles" / "video-only"
    write_blob_episode(bundles["video-only"], seed=2, video_only=True)

    settings = Settings(data_dir=root / "data")
    store = LocalObjectStore(settings.objects_dir)
    for directory in bundles.values():
        upload_bundle(store, directory)
    entries = [snapshot_entry(d) for d in bundles.values()]
    snapshot = DatasetSnapshot.freeze(SnapshotQuery(), entries, datetime.now(UTC))
    return Fleet(settings, snapshot, {e.episode_id for e in entries}, bundles)


@pytest.fixture(scope="module")
def sequential(fleet: Fleet) -> CuratedDataset:
    return curate(fleet.snapshot, fleet.ok_ids, fleet.settings, RECIPE, workers=0)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    already = ray.is_initialized()
    ensure_ray(None, num_cpus=2)
    ensure_ray(None, num_cpus=2)  # idempotent
    yield
    if not already:
        ray.shutdown()


def test_real_expert_episodes_pass_and_planted_copies_are_near_duplicates(
    fleet: Fleet, sequential: CuratedDataset
) -> None:
    ids = {name: episode_id(d) for name, d in fleet.bundles.items()}
    experts = [f"{task}-{k}" for task, n in EXPERTS.items() for k in range(n)]
    report = sequential.report
    assert [(d.episode_id, d.reason) for d in report.dropped_episodes] == [(ids["frozen"], "frozen_frames")]
    assert {d.episode_id: d.duplicate_of for d in report.duplicates} == {
        ids["reach-v3-0-re-encoded"]: ids["reach-v3-0"],
        ids["push-v3-1-noisy"]: ids["push-v3-1"],
    }
    kept = {e.episode_id: e for e in sequential.episodes}
    assert set(kept) == {ids[n] for n in [*experts, "video-only"]}
    assert kept[ids["video-only"]].video_only
    for name in experts:
        episode = kept[ids[name]]
        assert episode.environment.startswith("sim/layout-seed=")
        assert episode.stop - episode.start >= RECIPE.min_frames

    # Margins, not just sides of the threshold: experts of one task are far apart, copies close.
    embeddings = {
        name: analyse_episode(fleet.bundles[name], snapshot_entry(fleet.bundles[name]), RECIPE).embedding
        for name in [*experts, "reach-v3-0-re-encoded", "push-v3-1-noisy"]
    }
    for task, n in EXPERTS.items():
        for i in range(n):
            for j in range(i + 1, n):
                similarity = cosine(embeddings[f"{task}-{i}"], embeddings[f"{task}-{j}"])
                assert similarity < RECIPE.dedup_threshold - 0.02, (task, i, j, similarity)
    assert (
        cosine(embeddings["reach-v3-0"], embeddings["reach-v3-0-re-encoded"]) > RECIPE.dedup_threshold + 0.02
    )
    assert cosine(embeddings["push-v3-1"], embeddings["push-v3-1-noisy"]) > RECIPE.dedup_threshold + 0.02


def test_ray_data_gives_the_same_dataset_as_one_worker(
    fleet: Fleet, sequential: CuratedDataset, local_ray: None
) -> None:
    calls: list[tuple[int, int]] = []
    on_ray = curate(
        fleet.snapshot,
        fleet.ok_ids,
        fleet.settings,
        RECIPE,
        workers=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert on_ray == sequential
    assert on_ray.model_dump_json() == sequential.model_dump_json()
    total = len(fleet.ok_ids)
    assert calls == [(i, total) for i in range(1, total + 1)]
    # Every task cleaned up after itself: no bundle left in the temporary directory.
    leftovers = [p for p in Path(tempfile.gettempdir()).glob("wamfleet-curate-*") if p.is_dir()]
    assert leftovers == []


def test_ray_workers_report_an_unreadable_bundle_as_dropped(
    fleet: Fleet, local_ray: None, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store = LocalObjectStore(settings.objects_dir)
    directory = tmp_path / "bundle"
    shutil.copytree(fleet.bundles["reach-v3-1"], directory)
    upload_bundle(store, directory)
    video = settings.objects_dir / f"episodes/sim-1/{episode_id(directory)}/videos/wrist.mp4"
    video.write_bytes(video.read_bytes()[:-100])  # damaged in storage after the commit
    snapshot = DatasetSnapshot.freeze(SnapshotQuery(), [snapshot_entry(directory)], datetime.now(UTC))
    dataset = curate(snapshot, {episode_id(directory)}, settings, RECIPE, workers=2)
    assert dataset.episodes == []
    (dropped,) = dataset.report.dropped_episodes
    assert dropped.reason == "unreadable"
    assert "videos/wrist.mp4" in dropped.detail
