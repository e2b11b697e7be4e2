"""DreamZero's claims in miniature: does the WAM learn, and does the flywheel make it better?

Every experiment runs over --seeds. A seed draws the training layouts (even layout seeds, as
the fleet records); evaluation runs on odd layout seeds (`eval_layout_seed`), which no recording
ever uses, and the scripted expert is measured on the very same evaluation layouts.

  (a) wam-vs-expert   the WAM trained on diverse expert episodes of --tasks, against the
                      scripted expert, on new layouts of those tasks.
  (b) diversity       diverse (a new layout per episode) against repetitive (2 layouts per task,
                      recorded again with fresh action noise): the same tasks, the same number
                      of episodes, trained on the same number of windows (equal frames).
  (c) video-transfer  the held-out task appears only as video-only episodes (the expert's video,
                      actions removed); its success with those episodes against without.
  (d) wam-vs-vla      the same backbone and data trained on the action loss alone
                      (video_loss_weight=0): seen tasks on new layouts, and the held-out task.
  (e) flywheel        v1 (= the WAM of (a)) drives the fleet on new training layouts; v2 trains on
                      the expert data plus those autonomous episodes, outcome-aware (failed ones
                      train the world model only) and, as the ablation, imitating everything.
  (f) training-budget the WAM of (a) against the same data trained --budget-factor times as many
                      steps (cosine over the longer run): does the recipe's budget limit it?

Resumable: every dataset, policy and evaluation lands under --work and is skipped when found,
so a killed run (or a GPU slice that ran out of time, --budget-minutes) continues where it
stopped. Every training and evaluation is an MLflow run in the experiment `wamfleet-efficacy`.
Writes --out/efficacy.json (all counts, per seed, pooled with Wilson 95% intervals) and
--out/efficacy.png.

    python benchmarks/efficacy.py [--profile cpu|cpu-quick|gpu] [--seeds 0,1,2] [--experiments a,b,c,d,e]
        [--work ~/.cache/wamfleet/efficacy] [--out benchmarks/results] [--budget-minutes N]

--profile cpu-quick runs the same experiments on the demo's smaller recipe (two tasks), cheap
enough to run all five over 3 seeds on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.sim.drive import drive_episode, evaluate_closed_loop
from wamfleet.fleet_agent.sim.expert import record_expert_episode, run_expert_episode
from wamfleet.fleet_agent.sim.fleet import eval_layout_seed, layout_seed
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot
from wamfleet.fleet_agent.sim.sawyer import sawyer_embodiment
from wamfleet.fleet_agent.spool import Spool
from wamfleet.model.config import WAMConfig
from wamfleet.model.policy import load_policy
from wamfleet.pipelines.engine_client import EnginePolicyClient
from wamfleet.pipelines.train_local import train_policy
from wamfleet.pipelines.windows import window_starts
from wamfleet.platform.rollouts.gates import wilson_interval95
from wamfleet.serving.engine import PolicyEngine

EXPERIMENTS = {
    "a": "wam-vs-expert",
    "b": "diversity",
    "c": "video-transfer",
    "d": "wam-vs-vla",
    "e": "flywheel",
    "f": "training-budget",
}
BUDGET_FACTOR = 4  # (f): the long arm trains this many times the profile's steps


@dataclass(frozen=True)
class Profile:
    preset: str
    image_size: int
    tasks: tuple[str, ...]
    heldout_task: str  # never in the action data: (c) and (d)
    episodes_per_task: int  # expert episodes per task and seed
    repetitive_layouts: int
    steps: int
    batch_size: int
    lr: float
    eval_episodes: int  # evaluation layouts per task and seed
    fleet_episodes_per_task: int  # (e): episodes v1 drives per task
    max_steps: int = 150
    hold: int = 4  # frames recorded after success
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine: to lr / 10 over the steps
    device: str = "cpu"
    config_overrides: dict[str, Any] = field(default_factory=dict)


# 2 CPU cores: the tiny WAM at 64 px, four tasks, ~11 min of training per policy.
CPU = Profile(
    preset="tiny",
    image_size=64,
    tasks=("reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3"),
    # Like push (an object slid to a goal on the table); drawer-close was closed by chance by
    # barely trained policies, which says nothing about transfer.
    heldout_task="plate-slide-v3",
    episodes_per_task=20,
    repetitive_layouts=2,
    steps=2000,
    batch_size=16,
    lr=3e-3,
    eval_episodes=10,
    fleet_episodes_per_task=10,
)

PROFILES = {
    "cpu": CPU,
    # 2 CPU cores, every experiment over 3 seeds in about 70 min: the demo's recipe (reach and push,
    # 10 episodes per task, 600 steps), 8 evaluation layouts per task and seed.
    "cpu-quick": replace(
        CPU, tasks=("reach-v3", "push-v3"), episodes_per_task=10, steps=600, eval_episodes=8
    ),
    # One GPU, sliced into 10-minute windows (--budget-minutes 9): the small WAM at 128 px, more
    # tasks and steps. small's windows span 97 frames: the expert holds after success.
    "gpu": Profile(
        preset="small",
        image_size=128,
        tasks=(
            "reach-v3",
            "push-v3",
            "drawer-open-v3",
            "button-press-topdown-v3",
            "door-open-v3",
            "window-open-v3",
            "plate-slide-v3",
            "drawer-close-v3",
        ),
        heldout_task="window-close-v3",
        episodes_per_task=40,
        repetitive_layouts=2,
        steps=3000,
        batch_size=16,
        lr=1e-4,
        eval_episodes=10,
        fleet_episodes_per_task=10,
        hold=150,
        device="cuda",
    ),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class State:
    """Finished units (datasets, policies, evaluations) by key, saved after every unit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.units: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.units.get(key)

    def put(self, key: str, value: Any) -> None:
        self.units[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.units, indent=1, sort_keys=True))
        tmp.replace(self.path)


class OutOfTime(Exception):
    """The run's --budget-minutes is spent: stop before the next unit (rerun to continue)."""


@dataclass
class Runner:
    profile: Profile
    work: Path
    state: State
    deadline: float | None
    budget_factor: int = BUDGET_FACTOR

    def unit(self, key: str, build: Callable[[], Any]) -> Any:
        done = self.state.get(key)
        if done is not None:
            return done
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise OutOfTime(key)
        log(f"{key}: running")
        start = time.perf_counter()
        value = build()
        log(f"{key}: done in {time.perf_counter() - start:.0f} s")
        self.state.put(key, value)
        return value

    # Data --------------------------------------------------------------------------------------

    def record_expert(
        self, seed: int, name: str, layouts: dict[str, list[tuple[int, int]]], video_only: bool = False
    ) -> list[str]:
        """Expert episodes per task at (layout seed, noise seed); bundle directories. `video_only`:
        the actions removed (what a human video offers)."""

        def build() -> list[str]:
            out = []
            for task, pairs in layouts.items():
                robot = MetaWorldRobot(task, self.profile.image_size)
                try:
                    for k, (layout, noise) in enumerate(pairs):
                        directory = self.work / f"seed{seed}" / "data" / name / f"{task}-{k}"
                        if not (directory / "manifest.json").exists():
                            record_expert_episode(
                                robot,
                                directory,
                                robot_id=f"efficacy-{name}",
                                seed=layout,
                                noise_seed=noise,
                                max_steps=self.profile.max_steps,
                                frames_after_success=self.profile.hold,
                                video_only=video_only,
                            )
                        out.append(str(directory))
                finally:
                    robot.close()
            return out

        return list(self.unit(f"seed{seed}/data/{name}", build))

    def drive_fleet(self, seed: int, policy: str, name: str) -> list[str]:
        """Autonomous episodes under `policy` on new training layouts, recorded with outcomes."""

        def build() -> list[str]:
            spool = Spool(self.work / f"seed{seed}" / "data" / name)
            engine = PolicyEngine(load_policy(policy, device=self.profile.device), version="v1", seed=seed)
            client = EnginePolicyClient(engine)
            out = []
            try:
                for task in self.profile.tasks:
                    robot = MetaWorldRobot(task, self.profile.image_size)
                    try:
                        for k in range(self.profile.fleet_episodes_per_task):
                            result = drive_episode(
                                client,
                                robot,
                                spool,
                                robot_id="efficacy-fleet",
                                seed=layout_seed(seed, f"efficacy-fleet/{task}", k),
                                max_steps=self.profile.max_steps,
                            )
                            if result.directory is not None:
                                out.append(str(result.directory))
                    finally:
                        robot.close()
            finally:
                engine.close()
            return out

        return list(self.unit(f"seed{seed}/data/{name}", build))

    # Training and evaluation -------------------------------------------------------------------

    def train(
        self,
        seed: int,
        arm: str,
        bundles: list[str],
        max_windows: int | None = None,
        steps: int | None = None,
        **options: Any,
    ) -> str:
        directory = self.work / f"seed{seed}" / "policies" / arm

        def build() -> dict[str, Any]:
            import mlflow

            p = self.profile
            overrides = dict(p.config_overrides) | options.pop("config_overrides", {})
            arm_steps = steps or p.steps
            started = time.perf_counter()
            result = train_policy(
                [Path(b) for b in sorted(bundles)],
                directory,
                sawyer_embodiment(p.image_size),
                preset=p.preset,
                steps=arm_steps,
                batch_size=p.batch_size,
                lr=p.lr,
                seed=seed,
                metadata={"efficacy": arm},
                config_overrides=overrides,
                max_windows=max_windows,
                device=p.device,
                lr_schedule=p.lr_schedule,
                **options,
            )
            seconds = time.perf_counter() - started
            last = result.losses[-50:]
            info: dict[str, Any] = {
                "policy": str(directory),
                "episodes": len(bundles),
                "windows": result.windows,
                "steps": arm_steps,
                "final_loss": float(np.mean(last)),
                "train_s": round(seconds, 1),
            }
            with mlflow.start_run(run_name=f"seed{seed}-{arm}-train"):
                mlflow.log_params(
                    {
                        "seed": seed,
                        "arm": arm,
                        "preset": p.preset,
                        "steps": arm_steps,
                        "batch_size": p.batch_size,
                    }
                    | {k: str(v) for k, v in options.items()}
                    | {f"config.{k}": str(v) for k, v in overrides.items()}
                )
                mlflow.log_metrics({k: float(v) for k, v in info.items() if not isinstance(v, str)})
            return info

        return str(self.unit(f"seed{seed}/train/{arm}", build)["policy"])

    def evaluate(self, seed: int, arm: str, policy: str | None, tasks: tuple[str, ...]) -> dict[str, Any]:
        """Per task: successes, episodes, mean progress on the seed's evaluation layouts."""
        key = f"seed{seed}/eval/{arm}/{','.join(tasks)}"

        def build() -> dict[str, Any]:
            import mlflow

            p = self.profile
            if policy is None:
                per_task = {t: expert_on_eval_layouts(t, seed, p) for t in tasks}
            else:
                engine = PolicyEngine(load_policy(policy, device=p.device), version=arm, seed=seed)
                try:
                    report = evaluate_closed_loop(
                        EnginePolicyClient(engine),
                        list(tasks),
                        p.eval_episodes,
                        seed,
                        max_steps=p.max_steps,
                        image_size=p.image_size,
                    )
                finally:
                    engine.close()
                per_task = {
                    t: {"successes": r.successes, "episodes": r.episodes, "progress": r.mean_progress}
                    for t, r in report.tasks.items()
                }
            with mlflow.start_run(run_name=f"seed{seed}-{arm}-eval"):
                mlflow.log_params({"seed": seed, "arm": arm, "tasks": ",".join(tasks)})
                mlflow.log_metrics(
                    {f"success.{t}": r["successes"] / max(1, r["episodes"]) for t, r in per_task.items()}
                    | {f"progress.{t}": r["progress"] for t, r in per_task.items()}
                )
            return per_task

        return dict(self.unit(key, build))


def expert_on_eval_layouts(task: str, seed: int, profile: Profile) -> dict[str, Any]:
    """The scripted expert (with the recording's action noise) on the evaluation layouts."""
    robot = MetaWorldRobot(task, profile.image_size)
    try:
        outcomes = [
            run_expert_episode(
                robot,
                None,
                seed=eval_layout_seed(seed, task, k),
                max_steps=profile.max_steps,
                frames_after_success=0,
            )
            for k in range(profile.eval_episodes)
        ]
    finally:
        robot.close()
    return {
        "successes": sum(bool(o.success) for o in outcomes),
        "episodes": len(outcomes),
        "progress": float(np.mean([o.progress or 0.0 for o in outcomes])),
    }


def count_windows(bundles: list[str], cfg: WAMConfig) -> int:
    total = 0
    for b in bundles:
        with EpisodeReader(Path(b), verify=False) as reader:
            total += len(window_starts(reader.num_frames, cfg))
    return total


def run_seed(runner: Runner, seed: int, experiments: set[str]) -> None:
    p = runner.profile
    n = p.episodes_per_task
    # (layout seed, noise seed): a diverse episode draws its noise from its own layout seed.
    diverse_layouts = {t: [(layout_seed(seed, f"efficacy/{t}", k),) * 2 for k in range(n)] for t in p.tasks}
    diverse = runner.record_expert(seed, "expert-diverse", diverse_layouts)
    max_windows = None
    if "b" in experiments:
        repetitive_layouts = {
            t: [
                (
                    layout_seed(seed, f"efficacy-repetitive/{t}", k % p.repetitive_layouts),
                    layout_seed(seed, f"efficacy-noise/{t}", k),
                )
                for k in range(n)
            ]
            for t in p.tasks
        }
        repetitive = runner.record_expert(seed, "expert-repetitive", repetitive_layouts)
        cfg = WAMConfig.preset_named(p.preset, **p.config_overrides)
        max_windows = min(count_windows(diverse, cfg), count_windows(repetitive, cfg))
    wam = runner.train(seed, "wam", diverse, max_windows=max_windows)
    runner.evaluate(seed, "expert", None, (*p.tasks, p.heldout_task))
    runner.evaluate(seed, "wam", wam, p.tasks)
    if "b" in experiments:
        rep = runner.train(seed, "repetitive", repetitive, max_windows=max_windows)
        runner.evaluate(seed, "repetitive", rep, p.tasks)
    if "c" in experiments or "d" in experiments:
        runner.evaluate(seed, "wam", wam, (p.heldout_task,))
    if "c" in experiments:
        video_layouts = {
            p.heldout_task: [
                (layout_seed(seed, f"efficacy-video/{p.heldout_task}", k),) * 2 for k in range(n)
            ]
        }
        video = runner.record_expert(seed, "video-only", video_layouts, video_only=True)
        with_video = runner.train(seed, "wam+video", diverse + video, max_windows=max_windows)
        runner.evaluate(seed, "wam+video", with_video, (p.heldout_task,))
    if "d" in experiments:
        vla = runner.train(
            seed, "vla", diverse, max_windows=max_windows, config_overrides={"video_loss_weight": 0.0}
        )
        runner.evaluate(seed, "vla", vla, p.tasks)
        runner.evaluate(seed, "vla", vla, (p.heldout_task,))
    if "e" in experiments:
        fleet = runner.drive_fleet(seed, wam, "autonomous-v1")
        for arm, rule in (("v2", "world_model"), ("v2-imitate", "imitate")):
            v2 = runner.train(seed, arm, diverse + fleet, failed_episodes=rule)
            runner.evaluate(seed, arm, v2, p.tasks)
    if "f" in experiments:
        arm = long_arm(runner.budget_factor)
        long = runner.train(seed, arm, diverse, max_windows=max_windows, steps=runner.budget_factor * p.steps)
        runner.evaluate(seed, arm, long, p.tasks)


def long_arm(factor: int) -> str:
    return f"wam-{factor}x-steps"


# Report -----------------------------------------------------------------------------------------


def pooled(
    state: State, seeds: list[int], arm: str, tasks: tuple[str, ...], stored: tuple[str, ...] | None = None
) -> dict[str, Any] | None:
    """Successes/episodes per task and overall, summed over the seeds that finished, with Wilson
    intervals, plus the per-seed rates. `stored`: the task list the evaluation ran over, when
    `tasks` is a part of it (the expert runs once over every task)."""
    per_seed = [state.get(f"seed{s}/eval/{arm}/{','.join(stored or tasks)}") for s in seeds]
    done = [(s, r) for s, r in zip(seeds, per_seed, strict=True) if r is not None]
    if not done:
        return None
    rows: dict[str, Any] = {}
    for task in (*tasks, "overall"):
        names = tasks if task == "overall" else (task,)
        k = sum(r[t]["successes"] for _, r in done for t in names)
        m = sum(r[t]["episodes"] for _, r in done for t in names)
        low, high = wilson_interval95(k, m)
        rows[task] = {
            "successes": k,
            "episodes": m,
            "rate": k / m if m else None,
            "ci95": [low, high],
            "per_seed": {
                str(s): sum(r[t]["successes"] for t in names) / max(1, sum(r[t]["episodes"] for t in names))
                for s, r in done
            },
            "progress": float(np.mean([r[t]["progress"] for _, r in done for t in names])),
        }
    return {"seeds": [s for s, _ in done], "tasks": rows}


def summarise(
    state: State,
    profile: Profile,
    seeds: list[int],
    experiments: set[str],
    budget_factor: int = BUDGET_FACTOR,
) -> dict[str, Any]:
    """The requested experiments' arms, pooled over the seeds (only what ran is shown)."""
    seen, held = profile.tasks, (profile.heldout_task,)
    long_label = f"wam, {budget_factor * profile.steps} steps"
    arms: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
        "a": {"expert": ("expert", seen), "wam": ("wam", seen)},
        "b": {"diverse": ("wam", seen), "repetitive": ("repetitive", seen)},
        "c": {
            "expert": ("expert", held),
            "without video": ("wam", held),
            "with video-only episodes": ("wam+video", held),
        },
        "d": {
            "expert, held-out task": ("expert", held),
            "wam, seen tasks": ("wam", seen),
            "vla, seen tasks": ("vla", seen),
            "wam, held-out task": ("wam", held),
            "vla, held-out task": ("vla", held),
        },
        "e": {"v1": ("wam", seen), "v2 outcome-aware": ("v2", seen), "v2 imitate all": ("v2-imitate", seen)},
        "f": {
            "expert": ("expert", seen),
            f"wam, {profile.steps} steps": ("wam", seen),
            long_label: (long_arm(budget_factor), seen),
        },
    }
    out: dict[str, Any] = {}
    for letter, named in arms.items():
        if letter not in experiments:
            continue
        results = {
            label: pooled(state, seeds, arm, tasks, seen + held if arm == "expert" else None)
            for label, (arm, tasks) in named.items()
        }
        out[EXPERIMENTS[letter]] = {k: v for k, v in results.items() if v is not None}
    a, f = out.get(EXPERIMENTS["a"], {}), out.get(EXPERIMENTS["f"], {})
    if "wam" in a and "expert" in a:  # the target: at least 0.8 of the expert's success
        out["wam-to-expert-ratio"] = ratio_to_expert(a["wam"], a["expert"])
    if long_label in f and "expert" in f:
        out["long-wam-to-expert-ratio"] = ratio_to_expert(f[long_label], f["expert"])
    out["training"] = {k: v for k, v in state.units.items() if "/train/" in k}
    return out


def ratio_to_expert(arm: dict[str, Any], expert: dict[str, Any]) -> dict[str, float | None]:
    rates = expert["tasks"]
    return {
        task: row["rate"] / rates[task]["rate"] if rates[task]["rate"] else None
        for task, row in arm["tasks"].items()
    }


def print_summary(summary: dict[str, Any]) -> None:
    for name in EXPERIMENTS.values():
        arms = summary.get(name) or {}
        if not arms:
            continue
        print(f"\n{name}")
        for label, result in arms.items():
            tasks = result["tasks"]
            cells = []
            for task, row in tasks.items():
                low, high = row["ci95"]
                cells.append(
                    f"{task} {row['successes']}/{row['episodes']} {row['rate']:.2f} [{low:.2f}, {high:.2f}]"
                )
            print(f"  {label:<26} seeds {result['seeds']}: " + "; ".join(cells))
        key = {EXPERIMENTS["a"]: "wam-to-expert-ratio", EXPERIMENTS["f"]: "long-wam-to-expert-ratio"}
        ratios = summary.get(key.get(name, ""))
        if ratios:
            cells = [f"{t} {r:.2f}" if r is not None else f"{t} -" for t, r in ratios.items()]
            print("  wam / expert success       " + "; ".join(cells))


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [n for n in EXPERIMENTS.values() if summary.get(n)]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), squeeze=False)
    for ax, name in zip(axes[0], shown, strict=True):
        labels, rates, errors = [], [], []
        for label, result in summary[name].items():
            row = result["tasks"]["overall"]
            low, high = row["ci95"]
            labels.append(f"{label}\n{row['successes']}/{row['episodes']}")
            rates.append(row["rate"])
            errors.append([row["rate"] - low, high - row["rate"]])
        ax.bar(range(len(labels)), rates, yerr=np.array(errors).T, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("success (95% Wilson)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--experiments", default="a,b,c,d,e", help="letters among a,b,c,d,e,f")
    parser.add_argument(
        "--budget-factor", type=int, default=BUDGET_FACTOR, help="(f): the long arm's steps, in profile steps"
    )
    parser.add_argument("--work", type=Path, help="default: ~/.cache/wamfleet/efficacy/<profile>")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--mlflow-uri", help="default: sqlite under --work")
    parser.add_argument(
        "--tag",
        help="appended to the output's name (efficacy-<profile>-<tag>.json), keeping other runs' files",
    )
    parser.add_argument(
        "--budget-minutes", type=float, help="start no unit after this long (rerun to resume)"
    )
    parser.add_argument("--steps", type=int, help="training steps per policy (profile's default)")
    parser.add_argument("--episodes-per-task", type=int, help="expert episodes per task and seed")
    parser.add_argument("--eval-episodes", type=int, help="evaluation layouts per task and seed")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    experiments = set(args.experiments.split(","))
    unknown = experiments - set(EXPERIMENTS)
    if unknown:
        parser.error(f"--experiments: unknown {sorted(unknown)}; choose from {sorted(EXPERIMENTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    profile = PROFILES[args.profile]
    changes = {
        "steps": args.steps,
        "episodes_per_task": args.episodes_per_task,
        "eval_episodes": args.eval_episodes,
    }
    profile = replace(profile, **{k: v for k, v in changes.items() if v is not None})
    if profile.device == "cuda" and not torch.cuda.is_available():
        parser.error("--profile gpu: torch sees no CUDA device here")
    work = args.work or Path.home() / ".cache" / "wamfleet" / "efficacy" / args.profile
    work.mkdir(parents=True, exist_ok=True)
    settings_file = work / "profile.json"
    current = json.dumps(asdict(profile), sort_keys=True)
    if settings_file.exists() and settings_file.read_text() != current:
        parser.error(f"--work: {work} holds a run with other settings; pass another --work")
    settings_file.write_text(current)
    torch.set_num_threads(args.threads)

    import mlflow

    mlflow_uri = args.mlflow_uri or f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("wamfleet-efficacy")
    deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
    state = State(work / "state.json")
    if args.budget_factor < 2:
        parser.error("--budget-factor: at least 2 (the long arm must train longer than (a)'s)")
    runner = Runner(profile, work, state, deadline, args.budget_factor)
    finished = True
    try:
        for seed in seeds:
            run_seed(runner, seed, experiments)
    except OutOfTime as stop:
        finished = False
        log(f"--budget-minutes spent before {stop}; rerun the same command to continue")
    summary = summarise(state, profile, seeds, experiments, args.budget_factor)
    result = {
        "profile": args.profile,
        "settings": asdict(profile),
        "seeds": seeds,
        "experiments": sorted(experiments),
        "finished": finished,
        "machine": f"{os.cpu_count()} CPU cores, {args.threads} torch threads"
        if profile.device == "cpu"
        else torch.cuda.get_device_name(0),
        "results": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.profile == "cpu" else f"-{args.profile}") + (f"-{args.tag}" if args.tag else "")
    (args.out / f"efficacy{suffix}.json").write_text(json.dumps(result, indent=1))
    plot(summary, args.out / f"efficacy{suffix}.png")
    print_summary(summary)
    print(f"\nwrote {args.out / f'efficacy{suffix}.json'} and .png; finished: {finished}")


if __name__ == "__main__":
    main()
