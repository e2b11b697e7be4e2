"""Fine-tuning throughput of the real Ray Train path: training samples/s of `pipelines.finetune`.

Builds a small dataset before any timing, in a temporary data dir with the embedded local
object store and SQLite catalog: Meta-World scripted-expert episodes (tasks rotating, a new
layout each) recorded with the ordinary EpisodeWriter, uploaded to the store and entered in
the catalog as a commit leaves them; then the pipeline's snapshot -> validate -> curate
(in-process) -> training shards for --preset. `finetune` then runs a Ray Train TorchTrainer with
--workers data-parallel workers (one CPU each, or one GPU each with --gpu) for --steps steps of
--batch-size windows per worker, training a new model from the shards.

Figures: samples/s inside the training loop (FinetuneResult: rank 0's steps x batch x workers
over its loop time), and wall-clock samples/s over the whole `finetune` call (worker group
start, shard download, model build, the loop, checkpoint and copy-out). Local Ray start-up is
timed apart and is in neither figure.

    python benchmarks/finetune.py [--preset tiny] [--workers 1] [--steps 40] [--batch-size 8]
                                  [--episodes 8] [--tasks reach-v3,push-v3]
    python benchmarks/finetune.py --preset small --gpu [--workers N]   # one GPU per worker, bf16

The `small` preset trains on windows of 1 + 4 chunks of 24 steps (97 frames), longer than an
expert episode that stops 4 frames after success (50-100 frames on most tasks). So with
`small` the expert keeps acting after success (--hold, default: --max-steps frames) and every
episode records --max-steps frames; throughput does not depend on what the frames show.
The shards are encoded on the driver's CPU, as the pipeline's shards step does: with the Wan VAE
of `small` that takes minutes (about 2 min per window on one CPU thread), outside the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.sim.fleet import layout_seed
from wamfleet.pipelines.curate import curate
from wamfleet.pipelines.finetune import FinetuneConfig, FinetuneResult, finetune
from wamfleet.pipelines.ray_runtime import ensure_ray
from wamfleet.pipelines.shards import ShardIndex, build_shards
from wamfleet.pipelines.snapshot import freeze_snapshot
from wamfleet.pipelines.validate import validate_snapshot
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.queries import add_embodiment, add_episode, add_robot
from wamfleet.platform.contracts.curation import CurationRecipe
from wamfleet.platform.contracts.dataset import SnapshotQuery
from wamfleet.platform.settings import Settings
from wamfleet.platform.storage.base import ObjectStore
from wamfleet.platform.storage.bundles import upload_bundle
from wamfleet.platform.storage.factory import open_object_store

ROBOT_ID = "bench-1"
DEFAULT_TASKS = "reach-v3,push-v3"
DEFAULT_IMAGE_SIZE = {"tiny": 64, "small": 128}


def record(
    catalog: Catalog, store: ObjectStore, root: Path, args: argparse.Namespace, tasks: tuple[str, ...]
) -> int:
    """Expert episodes into the store and the catalog (as a commit leaves them); returns frames."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from wamfleet.fleet_agent.sim.expert import expert_writer_kwargs, run_expert_episode
    from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
    from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment

    spec = sawyer_embodiment(args.image_size)
    with catalog.session() as session:
        add_embodiment(session, spec)
        add_robot(session, ROBOT_ID, spec.name, "sim", "benchmark")
    frames = 0
    robots: dict[str, MetaWorldRobot] = {}
    try:
        for k in range(args.episodes):
            task = tasks[k % len(tasks)]
            robot = robots.get(task) or robots.setdefault(task, MetaWorldRobot(task, args.image_size))
            seed = layout_seed(args.seed, ROBOT_ID, k)
            directory = root / f"{task}-{k}"
            with EpisodeWriter(directory, **expert_writer_kwargs(robot, ROBOT_ID, seed)) as writer:  # type: ignore[arg-type]
                outcome = run_expert_episode(
                    robot, writer, seed=seed, max_steps=args.max_steps, frames_after_success=args.hold
                )
                manifest = writer.close(outcome)
            upload_bundle(store, directory)
            with catalog.session() as session:
                add_episode(session, manifest)
            frames += manifest.num_frames
    finally:
        for robot in robots.values():
            robot.close()
    return frames


def build_dataset(settings: Settings, args: argparse.Namespace, tasks: tuple[str, ...]) -> ShardIndex:
    """Recorded episodes through the pipeline's snapshot, validate, curate and shards steps."""
    catalog = Catalog(settings.effective_catalog_url)
    store = open_object_store(settings)
    frames = record(catalog, store, settings.data_dir / "bundles", args, tasks)
    snapshot = freeze_snapshot(catalog, store, SnapshotQuery())
    report = validate_snapshot(catalog, store, snapshot)
    dataset = curate(snapshot, report.ok_ids, settings, CurationRecipe(), workers=0)
    versions = {e.embodiment: e.embodiment_version for e in snapshot.episodes}
    index = build_shards(catalog, store, dataset, versions, preset=args.preset, seed=args.seed)
    print(
        f"dataset: {args.episodes} expert episodes on {','.join(tasks)} ({frames} frames, "
        f"{args.image_size}x{args.image_size}, 2 cameras); {len(report.ok_ids)} valid, "
        f"{dataset.report.kept} curated; shards ({args.preset}): {index.windows('train')} train windows, "
        f"{index.windows('holdout')} holdout"
    )
    return index


def device_name(use_gpu: bool) -> str:
    threads = "1 thread per worker"
    if not use_gpu:
        return f"CPU ({os.cpu_count()} cores on the machine, {threads})"
    return f"GPU: {torch.cuda.get_device_name(0)} (one per worker, bf16 autocast)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(DEFAULT_IMAGE_SIZE))
    parser.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker (use_gpu=True)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (data parallel)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per worker per step")
    parser.add_argument("--episodes", type=int, default=8, help="expert episodes recorded")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="Meta-World tasks, comma-separated")
    parser.add_argument("--image-size", type=int, help="camera side; default: 64 (tiny), 128 (small)")
    parser.add_argument("--max-steps", type=int, default=150, help="expert steps per episode at most")
    parser.add_argument(
        "--hold", type=int, help="frames recorded after success; default: 4 (tiny), --max-steps (small)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: torch sees no CUDA device here (Ray Train would wait for a GPU forever)")
    tasks = tuple(args.tasks.split(","))
    args.image_size = args.image_size or DEFAULT_IMAGE_SIZE[args.preset]
    if args.hold is None:
        args.hold = 4 if args.preset == "tiny" else args.max_steps
    if not args.gpu:
        torch.set_num_threads(1)  # the driver encodes the shards; workers set their own threads

    with tempfile.TemporaryDirectory(prefix="wamfleet-bench-finetune-") as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data")
        start = time.perf_counter()
        index = build_dataset(settings, args, tasks)
        print(f"dataset built in {time.perf_counter() - start:.1f} s (not timed)")

        config = FinetuneConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            workers=args.workers,
            use_gpu=args.gpu,
            threads_per_worker=1,
        )
        start = time.perf_counter()
        # Ray Train's controller needs a CPU of its own beside the workers' (logical CPUs only).
        ensure_ray(None, num_cpus=max(os.cpu_count() or 1, args.workers * config.threads_per_worker + 1))
        init_s = time.perf_counter() - start
        start = time.perf_counter()
        result: FinetuneResult = finetune(settings, index, root / "policy", config, run_name="bench-finetune")
        wall_s = time.perf_counter() - start

    per_worker = min(args.batch_size, -(-index.windows("train") // args.workers))
    samples = args.steps * per_worker * args.workers
    print(f"device: {device_name(args.gpu)}")
    print(
        f"finetune {args.preset}: {args.workers} worker(s), {args.steps} steps x batch {per_worker} "
        f"per worker = {samples} samples; final loss {result.final_loss:.4f}"
    )
    print(f"ray init (local): {init_s:.2f} s (not in the figures below)")
    print(f"training loop (FinetuneResult): {result.samples_per_s:.1f} samples/s")
    print(
        f"finetune() wall clock: {wall_s:.2f} s, {samples / wall_s:.1f} samples/s "
        f"(fixed cost beyond the loop: {wall_s - samples / result.samples_per_s:.2f} s)"
    )


if __name__ == "__main__":
    main()
