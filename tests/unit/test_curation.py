"""Curation: every quality filter fires on an episode built to fail it, and only on that one.

Episodes are real bundles written by EpisodeWriter: a bright blob moving over a gradient on
two small cameras, the state its position, the action its next step. The selection steps
(near-duplicates, caps, split, hash) run on those bundles through curate(), or on analyses
built in the test where only the selection logic is under test.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wamfleet.fleet_agent.episode_format import load_manifest, write_manifest
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.pipelines.curate import (
    CurationError,
    assign_splits,
    build_dataset,
    curate,
    environment_of,
    holdout_draw,
    load_curated,
    save_curated,
)
from wamfleet.pipelines.curate_quality import EpisodeAnalysis, analyse_episode, cosine
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec, Outcome
from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.curation import DROP_REASONS, CurationRecipe, curated_key
from wamfleet.platform.contracts.dataset import DatasetSnapshot, SnapshotEpisode, SnapshotQuery
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest, FileEntry
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import LocalObjectStore
from wamfleet.platform.storage.bundles import upload_bundle

SPEC = EmbodimentSpec(
    name="blob-arm",
    cameras=[CameraSpec(name="front", height=32, width=48), CameraSpec(name="wrist", height=32, width=32)],
    fps=15,
    state_names=["x", "y"],
    action_names=["dx", "dy"],
)
FRAMES = 48
RECIPE = CurationRecipe()


def blob_images(x: float, y: float) -> dict[str, np.ndarray]:
    """A bright blob at (x, y) in [0, 1]^2 over a smooth gradient; the wrist camera sees it mirrored."""
    images = {}
    for k, cam in enumerate(SPEC.cameras):
        yy, xx = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
        bx = (x if k == 0 else 1 - x) * (cam.width - 1)
        by = (y if k == 0 else 1 - y) * (cam.height - 1)
        base = 60 + 50 * xx / cam.width + 30 * yy / cam.height
        blob = 170 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * 3.0**2))
        gray = np.clip(base + blob, 0, 255)
        images[cam.name] = np.stack([gray, gray * 0.9, 255 - gray], axis=-1).round().astype(np.uint8)
    return images


def trajectory(seed: int, frames: int, still_start: int, still_end: int) -> np.ndarray:
    """Positions (frames, 2): at rest for `still_start` frames, moving, at rest for `still_end`."""
    rng = np.random.default_rng(seed)
    freq, phase = rng.uniform(0.6, 1.4), rng.uniform(0, 2 * np.pi)
    ax, ay = rng.uniform(0.2, 0.35, size=2)
    moving = frames - still_start - still_end
    t = np.clip(np.arange(frames) - still_start, 0, moving) / FRAMES
    return np.stack(
        [
            0.5 + ax * np.sin(2 * np.pi * freq * t + phase),
            0.5 + ay * np.cos(2 * np.pi * freq * t + 2 * phase),
        ],
        axis=1,
    )


def write_blob_episode(
    directory: Path,
    *,
    seed: int,
    frames: int = FRAMES,
    still_start: int = 0,
    still_end: int = 0,
    defect: str | None = None,
    video_only: bool = False,
    task: str = "stack the blocks",
    site: str | None = "lab",
    tags: dict[str, str] | None = None,
    crf: int = 23,
    pixel_noise: int = 0,
    success: bool | None = True,
) -> EpisodeManifest:
    """One bundle; `defect` plants exactly one fault: frozen, black, gap, dropped, nan or spike."""
    positions = trajectory(seed, frames, still_start, still_end)
    actions = np.zeros_like(positions)
    actions[:-1] = np.diff(positions, axis=0)
    states = positions.copy()
    timestamps = np.arange(frames) / SPEC.fps
    images = [blob_images(*p) for p in positions]
    if defect == "frozen":  # the front camera repeats one picture for 20 frames while the blob moves
        for i in range(12, 32):
            images[i] = {**images[i], "front": images[12]["front"]}
    elif defect == "black":  # 6 of 48 frames black on every camera
        for i in range(10, 16):
            images[i] = {name: np.zeros_like(img) for name, img in images[i].items()}
    elif defect == "gap":  # recording paused for a second after frame 20
        timestamps[21:] += 1.0
    elif defect == "dropped":  # one frame in four lost: each interval 1/fps, every 4th 2/fps
        timestamps = (np.arange(frames) + np.arange(frames) // 4) / SPEC.fps
    elif defect == "nan":
        states[7, 1] = np.nan
    elif defect == "spike":
        actions[20, 0] += 50.0
    elif defect is not None:
        raise ValueError(f"defect: unknown {defect!r}")
    rng = np.random.default_rng(seed + 1000)
    with EpisodeWriter(
        directory,
        robot_id="robot-1",
        embodiment=SPEC,
        task=task,
        video_only=video_only,
        site=site,
        tags=tags or {},
        crf=crf,
    ) as writer:
        for i in range(frames):
            frame = images[i]
            if pixel_noise:
                frame = {
                    name: np.clip(
                        img.astype(np.int16) + rng.integers(-pixel_noise, pixel_noise + 1, img.shape), 0, 255
                    ).astype(np.uint8)
                    for name, img in frame.items()
                }
            writer.add_frame(
                frame, states[i], None if video_only else actions[i], timestamp=float(timestamps[i])
            )
        return writer.close(Outcome(success=success))


def snapshot_entry(directory: Path, **overrides: Any) -> SnapshotEpisode:
    """The snapshot's view of a bundle, as the catalog would list it."""
    manifest = load_manifest(directory)
    fields: dict[str, Any] = {
        "episode_id": str(manifest.episode_id),
        "robot_id": manifest.robot_id,
        "manifest_sha256": sha256_file(directory / MANIFEST_FILE),
        "task": manifest.task,
        "embodiment": manifest.embodiment.name,
        "embodiment_version": manifest.embodiment.version,
        "site": manifest.site,
        "tags": manifest.tags,
        "source": manifest.source,
        "has_actions": manifest.has_actions,
        "num_frames": manifest.num_frames,
        "fps": manifest.fps,
        "success": manifest.outcome.success,
        "policy_version": manifest.policy_version,
        "committed_at": datetime.now(UTC),
    }
    return SnapshotEpisode(**(fields | overrides))


def rewrite_manifest(directory: Path) -> None:
    """Re-lists every file's size and sha256 (after a file was replaced on purpose)."""
    manifest = load_manifest(directory)
    files = [
        FileEntry(
            path=f.path, size=(directory / f.path).stat().st_size, sha256=sha256_file(directory / f.path)
        )
        for f in manifest.files
    ]
    write_manifest(directory, manifest.model_copy(update={"files": files}))


def analyse(directory: Path, recipe: CurationRecipe = RECIPE, **overrides: Any) -> EpisodeAnalysis:
    return analyse_episode(directory, snapshot_entry(directory, **overrides), recipe)


def reasons(analysis: EpisodeAnalysis) -> list[str]:
    return [r.reason for r in analysis.rejections]


# Quality filters -------------------------------------------------------------------------------


def test_clean_episode_passes_every_filter_untrimmed(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=1)
    analysis = analyse(tmp_path / "ep")
    assert analysis.rejections == []
    assert (analysis.start, analysis.stop) == (0, FRAMES)
    assert analysis.video_only is False
    assert np.linalg.norm(analysis.embedding) == pytest.approx(1.0, abs=1e-4)
    assert analysis.metrics["black_fraction"] == 0.0
    assert analysis.metrics["frozen_seconds"] < RECIPE.max_frozen_seconds / 4
    assert analysis.metrics["spike_ratio"] < RECIPE.spike_factor / 4
    assert analysis.metrics["dropped_fraction"] == 0.0


@pytest.mark.parametrize(
    ("defect", "reason", "detail"),
    [
        ("frozen", "frozen_frames", "camera 'front': picture still for 1.20 s"),
        ("black", "black_frames", "camera 'front': 12.5% of frames; camera 'wrist': 12.5% of frames darker"),
        ("gap", "timestamp_gap", "between frames 20 and 21"),
        ("dropped", "dropped_frames", "frames missing at 15 fps"),
        ("nan", "non_finite", "state 'y' is nan at frame 7"),
        ("spike", "action_spike", "action 'dx' jumps by +50"),
    ],
)
def test_each_filter_fires_on_the_episode_built_to_fail_it(
    tmp_path: Path, defect: str, reason: str, detail: str
) -> None:
    write_blob_episode(tmp_path / "ep", seed=2, defect=defect)
    analysis = analyse(tmp_path / "ep")
    assert analysis.rejections, f"{defect}: passed every filter"
    assert analysis.rejections[0].reason == reason
    assert detail in analysis.rejections[0].detail
    assert analysis.embedding == []
    if defect != "gap":  # a 1 s gap also loses 15 frames' worth of intervals
        assert reasons(analysis) == [reason]


def test_a_longer_tolerance_lets_the_frozen_camera_pass(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=2, defect="frozen")
    assert analyse(tmp_path / "ep", CurationRecipe(max_frozen_seconds=1.5)).kept


def test_frame_count_mismatch_between_manifest_and_video(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=3, frames=40)
    write_blob_episode(tmp_path / "short", seed=3, frames=36)
    shutil.copy(tmp_path / "short" / "videos" / "wrist.mp4", tmp_path / "ep" / "videos" / "wrist.mp4")
    rewrite_manifest(tmp_path / "ep")
    analysis = analyse(tmp_path / "ep")
    assert reasons(analysis) == ["frame_count_mismatch"]
    assert "manifest says 40 frames; videos/wrist.mp4 36" in analysis.rejections[0].detail


def test_frame_count_mismatch_between_snapshot_and_manifest(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=3)
    analysis = analyse(tmp_path / "ep", num_frames=FRAMES + 2)
    assert reasons(analysis) == ["frame_count_mismatch"]
    assert f"snapshot {FRAMES + 2}" in analysis.rejections[0].detail


@pytest.mark.parametrize("damage", ["garbage-parquet", "altered-video"])
def test_unreadable_bundle_is_dropped_naming_the_file(tmp_path: Path, damage: str) -> None:
    write_blob_episode(tmp_path / "ep", seed=4)
    if damage == "garbage-parquet":
        (tmp_path / "ep" / "data.parquet").write_bytes(b"not parquet at all")
        rewrite_manifest(tmp_path / "ep")
        expected = "data.parquet"
    else:  # the checksum no longer matches the manifest
        video = tmp_path / "ep" / "videos" / "front.mp4"
        video.write_bytes(video.read_bytes()[:-10])
        expected = "videos/front.mp4"
    analysis = analyse(tmp_path / "ep")
    assert reasons(analysis) == ["unreadable"]
    assert analysis.rejections[0].detail.startswith(expected)


def test_idle_ends_are_trimmed_to_the_moving_range(tmp_path: Path) -> None:
    # Frames 0..5 at rest with a zero action; frame 6 is the first with a command. The range
    # holds every transition where state or action changes, with both its frames: the last
    # command (frame 42) moves the blob into frame 43, after which nothing changes.
    write_blob_episode(tmp_path / "ep", seed=5, still_start=6, still_end=5)
    with EpisodeReader(tmp_path / "ep") as reader:
        actions = reader.actions()
        assert actions is not None
        assert not actions[:6].any() and actions[6].any() and actions[42].any() and not actions[43:].any()
    analysis = analyse(tmp_path / "ep")
    assert analysis.kept
    assert (analysis.start, analysis.stop) == (5, 44)
    assert analysis.metrics["trimmed_start"] == 5 and analysis.metrics["trimmed_end"] == 4


def test_too_short_after_trimming(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=6, still_start=10, still_end=10)  # 48 - 9 - 9 = 30 kept
    analysis = analyse(tmp_path / "ep")
    assert reasons(analysis) == ["too_short"]
    assert "30 frames after trimming" in analysis.rejections[0].detail
    assert analyse(tmp_path / "ep", CurationRecipe(min_frames=30)).kept


def test_video_only_episode_is_kept_without_action_filters(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=7, video_only=True)
    analysis = analyse(tmp_path / "ep")
    assert analysis.kept and analysis.video_only
    assert "spike_ratio" not in analysis.metrics
    assert (analysis.start, analysis.stop) == (0, FRAMES)


# Curation end to end (in-process) --------------------------------------------------------------


def store_with(tmp_path: Path, directories: list[Path]) -> tuple[Settings, DatasetSnapshot]:
    settings = Settings(data_dir=tmp_path / "data")
    store = LocalObjectStore(settings.objects_dir)
    entries = []
    for directory in directories:
        upload_bundle(store, directory)
        entries.append(snapshot_entry(directory))
    return settings, DatasetSnapshot.freeze(SnapshotQuery(), entries, datetime.now(UTC))


def episode_id(directory: Path) -> str:
    return str(load_manifest(directory).episode_id)


def test_curate_removes_planted_near_duplicates_and_keeps_video_only(tmp_path: Path) -> None:
    b = tmp_path / "bundles"
    originals = [b / f"seed-{s}" for s in (11, 12, 13)]
    for s, directory in zip((11, 12, 13), originals, strict=True):
        write_blob_episode(directory, seed=s, success=s != 13)  # one failure: kept, counted
    # Written later, so their UUIDv7 ids sort after the originals: the originals stay.
    write_blob_episode(b / "re-encoded", seed=11, crf=32)
    write_blob_episode(b / "noisy", seed=12, pixel_noise=3)
    write_blob_episode(b / "video-only", seed=14, video_only=True)
    write_blob_episode(b / "nan", seed=15, defect="nan")
    write_blob_episode(b / "unvalidated", seed=16)
    everything = [*originals, b / "re-encoded", b / "noisy", b / "video-only", b / "nan", b / "unvalidated"]
    settings, snapshot = store_with(tmp_path, everything)
    ok = {episode_id(d) for d in everything if d.name != "unvalidated"}
    calls: list[tuple[int, int]] = []

    dataset = curate(snapshot, ok, settings, RECIPE, progress=lambda done, total: calls.append((done, total)))

    assert calls == [(i, 7) for i in range(1, 8)]
    report = dataset.report
    duplicates = {d.episode_id: d.duplicate_of for d in report.duplicates}
    assert duplicates == {
        episode_id(b / "re-encoded"): episode_id(originals[0]),
        episode_id(b / "noisy"): episode_id(originals[1]),
    }
    assert all(d.similarity >= RECIPE.dedup_threshold for d in report.duplicates)
    kept = {e.episode_id for e in dataset.episodes}
    assert kept == {episode_id(d) for d in [*originals, b / "video-only"]}
    assert [e.video_only for e in dataset.episodes if e.episode_id == episode_id(b / "video-only")] == [True]
    assert report.episodes_in == 8 and report.not_validated == 1 and report.analysed == 7
    assert report.dropped == dict.fromkeys(DROP_REASONS, 0) | {"non_finite": 1}
    assert [d.episode_id for d in report.dropped_episodes] == [episode_id(b / "nan")]
    assert report.duplicates_removed == 2 and report.kept == 4 and report.video_only_kept == 1
    assert report.failed_kept == 1
    assert report.frames_in == 7 * FRAMES and report.frames_kept == 4 * FRAMES
    assert report.per_task["stack the blocks"].model_dump() == {
        "episodes_in": 7,
        "kept": 4,
        "frames_kept": 4 * FRAMES,
    }
    assert report.per_embodiment["blob-arm"].kept == 4
    assert report.train + report.holdout == 4 and report.train >= 1
    # Distinct trajectories are far from the threshold, not just under it.
    analyses = {d.name: analyse(d) for d in originals}
    for i, a in enumerate(originals):
        for other in originals[i + 1 :]:
            assert (
                cosine(analyses[a.name].embedding, analyses[other.name].embedding)
                < RECIPE.dedup_threshold - 0.1
            )

    store = LocalObjectStore(settings.objects_dir)
    key = save_curated(store, dataset)
    assert key == curated_key(snapshot.snapshot_hash, dataset.dataset_hash)
    assert load_curated(store, snapshot.snapshot_hash, dataset.dataset_hash) == dataset


def test_ok_ids_of_another_snapshot_are_refused(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=1)
    settings, snapshot = store_with(tmp_path, [tmp_path / "ep"])
    stranger = str(uuid.uuid4())
    with pytest.raises(CurationError, match=f"ok_ids: 1 episode ids are not in snapshot .*{stranger}"):
        curate(snapshot, {stranger}, settings, RECIPE)


def test_an_altered_stored_dataset_is_refused(tmp_path: Path) -> None:
    write_blob_episode(tmp_path / "ep", seed=1)
    settings, snapshot = store_with(tmp_path, [tmp_path / "ep"])
    dataset = curate(snapshot, {episode_id(tmp_path / "ep")}, settings, RECIPE)
    store = LocalObjectStore(settings.objects_dir)
    key = save_curated(store, dataset)
    tampered = dataset.model_copy(
        update={"episodes": [e.model_copy(update={"stop": e.stop - 1}) for e in dataset.episodes]}
    )
    store.put_bytes(key, tampered.model_dump_json().encode())
    with pytest.raises(CurationError, match="does not hash to"):
        load_curated(store, snapshot.snapshot_hash, dataset.dataset_hash)


# Selection logic on given analyses ---------------------------------------------------------------


def fake_snapshot(
    specs: Sequence[tuple[str | None, dict[str, str], bool | None, int]], *, task: str = "t"
) -> tuple[DatasetSnapshot, dict[str, EpisodeAnalysis]]:
    """(robot site, tags, success, kept frames) per episode; embeddings all orthogonal."""
    entries, analyses = [], {}
    for i, (site, tags, success, frames) in enumerate(specs):
        eid = f"00000000-0000-7000-8000-{i:012d}"
        entries.append(
            SnapshotEpisode(
                episode_id=eid,
                robot_id="r",
                manifest_sha256=hashlib.sha256(eid.encode()).hexdigest(),
                task=task,
                embodiment="arm",
                embodiment_version=1,
                site=site,
                tags=tags,
                source="teleop",
                has_actions=True,
                num_frames=100,
                fps=15,
                success=success,
                policy_version=None,
                committed_at=datetime.now(UTC),
            )
        )
        embedding = [0.0] * len(specs)
        embedding[i] = 1.0
        analyses[eid] = EpisodeAnalysis(
            episode_id=eid, num_frames=100, video_only=False, start=0, stop=frames, embedding=embedding
        )
    return DatasetSnapshot.freeze(SnapshotQuery(), entries, datetime.now(UTC)), analyses


def test_environment_is_site_plus_the_recipes_tags() -> None:
    snapshot, _ = fake_snapshot([("sim", {"layout-seed": "7", "env": "reach-v3", "scene": "a"}, True, 50)])
    assert environment_of(snapshot.episodes[0], RECIPE) == "sim/layout-seed=7/scene=a"
    assert (
        environment_of(snapshot.episodes[0], CurationRecipe(environment_tags=["env"])) == "sim/env=reach-v3"
    )
    snapshot, _ = fake_snapshot([(None, {}, True, 50)])
    assert environment_of(snapshot.episodes[0], RECIPE) == "no-site"


def test_cap_per_environment_prefers_successful_then_longer_then_earlier() -> None:
    seed = {"layout-seed": "1"}
    snapshot, analyses = fake_snapshot(
        [
            ("lab", seed, False, 90),  # 0: failed
            ("lab", seed, True, 40),  # 1: successful, short
            ("lab", seed, True, 80),  # 2: successful, long
            ("lab", seed, None, 95),  # 3: unknown outcome
            ("lab", seed, True, 80),  # 4: as good as 2, later id
            ("lab", {"layout-seed": "2"}, False, 30),  # 5: alone in its environment
        ]
    )
    recipe = CurationRecipe(max_per_environment=2, holdout_fraction=0)
    dataset = build_dataset(snapshot, {e.episode_id for e in snapshot.episodes}, analyses, recipe)
    ids = [e.episode_id for e in snapshot.episodes]
    assert [e.episode_id for e in dataset.episodes] == [ids[2], ids[4], ids[5]]
    assert dataset.report.capped_per_environment == 3
    assert dataset.report.environments == 2
    for environment in {e.environment for e in dataset.episodes}:
        assert sum(e.environment == environment for e in dataset.episodes) <= 2


def test_cap_per_task_goes_round_robin_over_environments() -> None:
    snapshot, analyses = fake_snapshot(
        [("lab", {"layout-seed": "a"}, True, 50 + i) for i in range(4)]
        + [("lab", {"layout-seed": "b"}, True, 50)]
        + [("home", {}, True, 50)]
    )
    recipe = CurationRecipe(max_per_task=4, holdout_fraction=0)
    dataset = build_dataset(snapshot, {e.episode_id for e in snapshot.episodes}, analyses, recipe)
    environments = sorted(e.environment for e in dataset.episodes)
    # One from each of the three environments first, then the best remaining one of "a".
    assert environments == ["home", "lab/layout-seed=a", "lab/layout-seed=a", "lab/layout-seed=b"]
    assert dataset.report.capped_per_task == 2
    assert {e.episode_id for e in dataset.episodes} >= {snapshot.episodes[3].episode_id}  # the longest of "a"


def test_holdout_split_is_deterministic_and_keeps_a_train_episode() -> None:
    snapshot, analyses = fake_snapshot([("lab", {"layout-seed": str(i)}, True, 50) for i in range(200)])
    splits = assign_splits(snapshot.episodes, analyses, 0.25)
    assert splits == assign_splits(list(reversed(snapshot.episodes)), analyses, 0.25)
    holdout = [eid for eid, split in splits.items() if split == "holdout"]
    assert 30 <= len(holdout) <= 70
    assert all(holdout_draw(eid) < 0.25 for eid in holdout)
    # A split depends on the episode alone: the same episode is held out in any dataset.
    assert assign_splits(snapshot.episodes[:10], analyses, 0.25) == {
        e.episode_id: splits[e.episode_id] for e in snapshot.episodes[:10]
    }
    # Even when every episode draws holdout, one trains.
    single = assign_splits(snapshot.episodes[:3], analyses, 0.999999)
    assert sorted(single.values()) == ["holdout", "holdout", "train"]


def test_video_only_episodes_always_train() -> None:
    snapshot, analyses = fake_snapshot([("lab", {"layout-seed": str(i)}, True, 50) for i in range(20)])
    for eid in analyses:
        analyses[eid] = analyses[eid].model_copy(update={"video_only": True})
    assert set(assign_splits(snapshot.episodes, analyses, 0.9).values()) == {"train"}


def test_failed_episodes_train_unless_imitated() -> None:
    """A failed episode's actions are no target under outcome-aware training: never held out for
    offline action error (a holdout of only failed episodes measured nothing, issue 18)."""
    snapshot, analyses = fake_snapshot([("lab", {"layout-seed": str(i)}, False, 50) for i in range(20)])
    assert set(assign_splits(snapshot.episodes, analyses, 0.9).values()) == {"train"}
    imitated = assign_splits(snapshot.episodes, analyses, 0.9, failed_episodes="imitate")
    assert "holdout" in imitated.values()


def test_dataset_hash_is_stable_and_covers_the_recipe() -> None:
    snapshot, analyses = fake_snapshot([("lab", {"layout-seed": str(i)}, True, 50) for i in range(6)])
    ok = {e.episode_id for e in snapshot.episodes}
    first = build_dataset(snapshot, ok, analyses, RECIPE)
    again = build_dataset(snapshot, set(reversed(sorted(ok))), dict(reversed(analyses.items())), RECIPE)
    assert first.dataset_hash == again.dataset_hash
    assert first.model_dump_json() == again.model_dump_json()
    assert (
        build_dataset(snapshot, ok, analyses, CurationRecipe(min_frames=31)).dataset_hash
        != first.dataset_hash
    )
    fewer = build_dataset(snapshot, set(sorted(ok)[1:]), analyses, RECIPE)
    assert fewer.dataset_hash != first.dataset_hash


def test_a_small_dataset_still_sets_one_episode_aside_for_offline_evaluation() -> None:
    snapshot, analyses = fake_snapshot([("lab", {"layout-seed": str(i)}, True, 50) for i in range(6)])
    draws = sorted(snapshot.episodes, key=lambda e: holdout_draw(e.episode_id))
    fraction = holdout_draw(draws[0].episode_id) / 2  # below every draw: none would be held out
    splits = assign_splits(snapshot.episodes, analyses, fraction)
    assert [eid for eid, split in splits.items() if split == "holdout"] == [draws[0].episode_id]
    assert set(assign_splits(snapshot.episodes[:2], analyses, fraction).values()) == {"train"}
    assert set(assign_splits(snapshot.episodes, analyses, 0.0).values()) == {"train"}
