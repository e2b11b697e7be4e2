"""Diverse vs. repetitive data at equal volume (DreamZero's ablation), on the simulated fleet.

Records two datasets of the same number of episodes with the scripted experts, one simulated
robot per process (`run_sim_fleet`, no platform): `FleetMode.diverse` (tasks rotating over
--tasks, every episode a new object layout) and `FleetMode.repetitive` (a quarter of the tasks,
each on 2 fixed layouts; with 4 tasks, the first task only). Trains one policy on each with
identical settings (`train_policy`: same preset, seed, steps, batch and learning rate), then
drives both in closed loop (in-process serving engine) on the same held-out layouts
(eval_layout_seed: odd seeds, which no data collection uses) of every task in --tasks.

Figures: episodes, frames, training windows and distinct (task, layout) pairs per dataset, and
per task and overall for each policy the success rate and mean progress (the best fraction of
the initial object-to-goal distance, hand-to-goal for reach, closed during the episode; 1.0 on
success; an arm that never moves scores 0). Progress says more than success at this scale.

    python benchmarks/diversity_ablation.py [--tasks reach-v3,push-v3,drawer-open-v3,door-open-v3]
        [--robots 2] [--episodes 12] [--steps 500] [--eval-episodes 6] [--image-size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from wamfleet.fleet_agent.sim.drive import ClosedLoopReport, evaluate_closed_loop
from wamfleet.fleet_agent.sim.fleet import FleetMode, SimRobotPlan, plan_fleet, run_sim_fleet
from wamfleet.fleet_agent.sim.metaworld_robot import sawyer_embodiment
from wamfleet.model.policy import load_policy
from wamfleet.pipelines.train_local import TrainResult, train_policy
from wamfleet.serving.engine import PolicyEngine
from wamfleet.serving.local_client import EnginePolicyClient

MODES = (FleetMode.diverse, FleetMode.repetitive)


@dataclass
class Dataset:
    mode: FleetMode
    bundles: list[Path]
    frames: int
    pairs: set[tuple[str, str]]  # (Meta-World task, layout seed) as recorded
    per_task: Counter[str]
    expert_successes: int
    record_s: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def record(mode: FleetMode, args: argparse.Namespace, tasks: list[str], spool_root: Path) -> Dataset:
    robot_ids = [f"sim-{k + 1}" for k in range(args.robots)]
    schedule = plan_fleet(robot_ids, args.episodes, tasks, mode, args.seed)
    plans = [
        SimRobotPlan(
            robot_id=rid, episodes=schedule[rid], image_size=args.image_size, max_steps=args.max_steps
        )
        for rid in robot_ids
    ]
    start = time.perf_counter()
    data = Dataset(mode, [], 0, set(), Counter(), 0, 0.0)
    for event in run_sim_fleet(plans, spool_root / mode.value):
        if event.kind != "recorded":
            continue
        manifest = event.manifest
        task = manifest.tags["env"]
        data.bundles.append(event.directory)
        data.frames += manifest.num_frames
        data.pairs.add((task, manifest.tags["layout-seed"]))
        data.per_task[task] += 1
        data.expert_successes += int(bool(manifest.outcome.success))
    data.record_s = time.perf_counter() - start
    return data


def train(data: Dataset, args: argparse.Namespace, out_dir: Path) -> tuple[TrainResult, float]:
    start = time.perf_counter()
    result = train_policy(
        sorted(data.bundles),
        out_dir,
        sawyer_embodiment(args.image_size),
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        metadata={"ablation": data.mode.value},
    )
    return result, time.perf_counter() - start


def evaluate(policy_dir: Path, version: str, args: argparse.Namespace, tasks: list[str]) -> ClosedLoopReport:
    engine = PolicyEngine(load_policy(policy_dir), version=version, seed=args.seed)
    try:
        return evaluate_closed_loop(
            EnginePolicyClient(engine),
            tasks,
            args.eval_episodes,
            args.seed,
            max_steps=args.max_steps,
            image_size=args.image_size,
        )
    finally:
        engine.close()


def overall(report: ClosedLoopReport) -> tuple[float, float]:
    """Success rate and mean progress over every evaluation episode."""
    episodes = sum(t.episodes for t in report.tasks.values())
    successes = sum(t.successes for t in report.tasks.values())
    progress = [p for t in report.tasks.values() for p in t.progress]
    return successes / episodes if episodes else 0.0, sum(progress) / len(progress) if progress else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="reach-v3,push-v3,drawer-open-v3,door-open-v3")
    parser.add_argument("--robots", type=int, default=2, help="simulated robots per fleet, one process each")
    parser.add_argument("--episodes", type=int, default=12, help="episodes per robot (both fleets)")
    parser.add_argument("--steps", type=int, default=500, help="training steps per policy")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--eval-episodes", type=int, default=6, help="held-out layouts per task")
    parser.add_argument("--max-steps", type=int, default=150, help="steps per episode (recorded, evaluated)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")

    started = time.perf_counter()
    datasets: dict[FleetMode, Dataset] = {}
    results: dict[FleetMode, TrainResult] = {}
    train_s: dict[FleetMode, float] = {}
    reports: dict[FleetMode, ClosedLoopReport] = {}
    eval_s: dict[FleetMode, float] = {}
    with tempfile.TemporaryDirectory(prefix="wamfleet-bench-diversity-") as tmp:
        root = Path(tmp)
        for mode in MODES:
            log(f"{mode.value}: recording {args.robots} x {args.episodes} episodes")
            datasets[mode] = record(mode, args, tasks, root / "spool")
        for mode in MODES:
            log(f"{mode.value}: training {args.steps} steps")
            results[mode], train_s[mode] = train(datasets[mode], args, root / "policy" / mode.value)
        for mode in MODES:
            log(f"{mode.value}: closed-loop evaluation, {args.eval_episodes} episodes x {len(tasks)} tasks")
            start = time.perf_counter()
            reports[mode] = evaluate(results[mode].policy_dir, mode.value, args, tasks)
            eval_s[mode] = time.perf_counter() - start
    total_s = time.perf_counter() - started

    print(
        f"diversity ablation: {args.robots} robots x {args.episodes} episodes per fleet, "
        f"tasks {','.join(tasks)}, {args.image_size}x{args.image_size}, seed {args.seed}, "
        f"{os.cpu_count()} CPU cores ({torch.get_num_threads()} torch thread)"
    )
    print("datasets (scripted experts):")
    for mode, data in datasets.items():
        counts = ", ".join(f"{t} {data.per_task[t]}" for t in tasks if data.per_task[t])
        print(
            f"  {mode.value:<10}  {len(data.bundles)} episodes, {data.frames} frames, "
            f"{results[mode].windows} training windows, {len(data.pairs)} distinct (task, layout) pairs; "
            f"expert success {data.expert_successes}/{len(data.bundles)}; per task: {counts}; "
            f"recorded in {data.record_s:.0f} s"
        )
    print(
        f"training ({args.preset}, same settings): {args.steps} steps, batch {args.batch_size}, "
        f"lr {args.lr}, seed {args.seed}"
    )
    for mode, result in results.items():
        last = result.losses[-10:]
        print(
            f"  {mode.value:<10}  final loss (mean of last {len(last)}) {sum(last) / len(last):.4f}, "
            f"{train_s[mode]:.0f} s"
        )
    print(
        f"closed loop on held-out layouts: {args.eval_episodes} episodes per task, "
        f"at most {args.max_steps} steps each"
    )
    header = f"{'diverse success':>16} {'progress':>9} {'repetitive success':>19} {'progress':>9}"
    print(f"  {'task':<24} {header}")
    diverse, repetitive = reports[FleetMode.diverse], reports[FleetMode.repetitive]
    for task in tasks:
        d, r = diverse.tasks[task], repetitive.tasks[task]
        print(
            f"  {task:<24} {d.successes:>6}/{d.episodes:<2} {d.success_rate:>6.2f} {d.mean_progress:>9.3f} "
            f"{r.successes:>9}/{r.episodes:<2} {r.success_rate:>6.2f} {r.mean_progress:>9.3f}"
        )
    (ds, dp), (rs, rp) = overall(diverse), overall(repetitive)
    print(f"  {'overall':<24} {ds:>16.2f} {dp:>9.3f} {rs:>19.2f} {rp:>9.3f}")
    for mode, report in reports.items():
        print(f"  {mode.value:<10}  evaluated in {eval_s[mode]:.0f} s ({report.steps} control steps)")
    print(f"total run time: {total_s:.0f} s")


if __name__ == "__main__":
    main()
