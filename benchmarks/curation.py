"""Curation throughput: episodes/s analysed in one process vs. on Ray Data across the cores.

Builds N episodes in a temporary local object store (Meta-World scripted-expert episodes on
--tasks, a new layout each; or, with --synthetic, a blob moving over a gradient), then curates
the snapshot with workers=0 (the one-worker baseline: download, decode, filter, embed one
episode after another in this process) and with Ray Data on a local Ray (`--workers` tasks of
one CPU each). Ray start-up is timed apart, and so are both sides' first runs (cold caches,
imports, Ray workers starting). The headline compares warm runs only, alternated (sequential,
Ray, sequential, Ray, ...) so both see the same page cache and the same load on a shared
machine, medians of --repeats. Every run must give the same dataset. Episodes are recorded
before any timing starts.

    python benchmarks/curation.py [--episodes 24] [--size 96] [--max-steps 150] [--workers 2]
                                  [--repeats 3] [--synthetic]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from wamfleet.fleet_agent.episode_format import load_manifest
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.pipelines.curate import curate
from wamfleet.pipelines.ray_runtime import ensure_ray
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec, Outcome
from wamfleet.platform.contracts.curation import CuratedDataset, CurationRecipe
from wamfleet.platform.contracts.dataset import DatasetSnapshot, SnapshotEpisode, SnapshotQuery
from wamfleet.platform.contracts.episode import MANIFEST_FILE
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage import LocalObjectStore
from wamfleet.platform.storage.bundles import upload_bundle


def record_sim(root: Path, episodes: int, tasks: list[str], size: int, max_steps: int) -> list[Path]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from wamfleet.fleet_agent.sim.expert import record_expert_episode
    from wamfleet.fleet_agent.sim.fleet import layout_seed
    from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot

    directories = []
    robots: dict[str, MetaWorldRobot] = {}
    try:
        for k in range(episodes):
            task = tasks[k % len(tasks)]
            robot = robots.get(task) or robots.setdefault(task, MetaWorldRobot(task, image_size=size))
            directory = root / f"{task}-{k}"
            record_expert_episode(
                robot, directory, robot_id="bench", seed=layout_seed(0, "bench", k), max_steps=max_steps
            )
            directories.append(directory)
    finally:
        for robot in robots.values():
            robot.close()
    return directories


def record_synthetic(root: Path, episodes: int, size: int, frames: int) -> list[Path]:
    spec = EmbodimentSpec(
        name="bench-blob",
        cameras=[CameraSpec(name=c, height=size, width=size) for c in ("exterior", "wrist")],
        fps=15,
        state_names=["x", "y"],
        action_names=["dx", "dy"],
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    directories = []
    for k in range(episodes):
        rng = np.random.default_rng(k)
        freq, phase = rng.uniform(0.6, 1.4, size=2), rng.uniform(0, 2 * np.pi, size=2)
        t = np.arange(frames) / frames
        positions = 0.5 + 0.3 * np.sin(2 * np.pi * np.outer(t, freq) + phase)
        directory = root / f"blob-{k}"
        with EpisodeWriter(
            directory,
            robot_id="bench",
            embodiment=spec,
            task="follow the blob",
            site="lab",
            tags={"layout-seed": str(k)},
        ) as writer:
            for i, (x, y) in enumerate(positions):
                images = {}
                for c, (bx, by) in zip(("exterior", "wrist"), ((x, y), (1 - x, 1 - y)), strict=True):
                    blob = 170 * np.exp(
                        -((xx - bx * size) ** 2 + (yy - by * size) ** 2) / (2 * (size / 12) ** 2)
                    )
                    gray = np.clip(60 + 50 * xx / size + 30 * yy / size + blob, 0, 255)
                    images[c] = np.stack([gray, gray * 0.9, 255 - gray], axis=-1).astype(np.uint8)
                step = positions[min(i + 1, frames - 1)] - positions[i]
                writer.add_frame(images, positions[i], step)
            writer.close(Outcome(success=True))
        directories.append(directory)
    return directories


def snapshot_of(store: LocalObjectStore, directories: list[Path]) -> DatasetSnapshot:
    entries = []
    for directory in directories:
        m = upload_bundle(store, directory)
        entries.append(
            SnapshotEpisode(
                episode_id=str(m.episode_id),
                robot_id=m.robot_id,
                manifest_sha256=hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest(),
                task=m.task,
                embodiment=m.embodiment.name,
                embodiment_version=m.embodiment.version,
                site=m.site,
                tags=m.tags,
                source=m.source,
                has_actions=m.has_actions,
                num_frames=m.num_frames,
                fps=m.fps,
                success=m.outcome.success,
                policy_version=m.policy_version,
                committed_at=datetime.now(UTC),
            )
        )
    return DatasetSnapshot.freeze(SnapshotQuery(), entries, datetime.now(UTC))


def timed(run: Callable[[], CuratedDataset]) -> tuple[CuratedDataset, float]:
    start = time.perf_counter()
    dataset = run()
    return dataset, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--size", type=int, default=96, help="camera side in pixels (2 cameras)")
    parser.add_argument("--max-steps", type=int, default=150, help="expert steps (synthetic: frames)")
    parser.add_argument("--tasks", default="reach-v3,push-v3,drawer-open-v3,door-open-v3")
    parser.add_argument("--workers", type=int, default=2, help="Ray Data tasks at once (one CPU each)")
    parser.add_argument("--synthetic", action="store_true", help="blob episodes instead of Meta-World")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per side, alternated (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wamfleet-bench-curation-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        if args.synthetic:
            directories = record_synthetic(root / "bundles", args.episodes, args.size, args.max_steps)
        else:
            tasks = args.tasks.split(",")
            directories = record_sim(root / "bundles", args.episodes, tasks, args.size, args.max_steps)
        record_s = time.perf_counter() - start
        settings = Settings(data_dir=root / "data")
        store = LocalObjectStore(settings.objects_dir)
        snapshot = snapshot_of(store, directories)
        ok = {e.episode_id for e in snapshot.episodes}
        frames = sum(load_manifest(d).num_frames for d in directories)
        recipe = CurationRecipe()
        n = len(directories)

        baseline, seq_cold_s = timed(lambda: curate(snapshot, ok, settings, recipe, workers=0))
        start = time.perf_counter()
        ensure_ray(None, num_cpus=args.workers)
        init_s = time.perf_counter() - start
        cold, cold_s = timed(lambda: curate(snapshot, ok, settings, recipe, workers=args.workers))
        seq_runs, ray_runs = [], []
        for _ in range(max(1, args.repeats)):  # alternated: both sides warm, under the same load
            seq, seconds = timed(lambda: curate(snapshot, ok, settings, recipe, workers=0))
            seq_runs.append(seconds)
            warm, warm_seconds = timed(lambda: curate(snapshot, ok, settings, recipe, workers=args.workers))
            ray_runs.append(warm_seconds)
            assert seq == baseline and warm == baseline, "Ray Data and the sequential run disagree"
        assert cold == baseline, "Ray Data and the sequential run disagree"
        seq_s, warm_s = statistics.median(seq_runs), statistics.median(ray_runs)

    kind = "synthetic blob" if args.synthetic else "Meta-World expert"
    print(
        f"curation: {n} {kind} episodes, {frames} frames, 2 cameras at {args.size}x{args.size}, "
        f"{os.cpu_count()} CPU cores (recorded in {record_s:.1f} s, not timed)"
    )
    report = baseline.report
    print(
        f"result: kept {report.kept}, dropped {sum(report.dropped.values())}, "
        f"near-duplicates {report.duplicates_removed}, frames kept {report.frames_kept}"
    )
    print(
        f"first runs (cold caches, not compared): one worker {seq_cold_s:.2f} s; ray init "
        f"({args.workers} CPUs) {init_s:.2f} s, then ray data {cold_s:.2f} s ({seq_cold_s / cold_s:.2f}x)"
    )
    print(
        f"warm, alternated, median of {len(seq_runs)}: one worker (in-process) {seq_s:.2f} s, "
        f"{n / seq_s:.2f} episodes/s, {frames / seq_s:.0f} frames/s"
    )
    print(
        f"warm, alternated, median of {len(ray_runs)}: ray data, {args.workers} workers {warm_s:.2f} s, "
        f"{n / warm_s:.2f} episodes/s: {seq_s / warm_s:.2f}x one worker"
    )


if __name__ == "__main__":
    main()
