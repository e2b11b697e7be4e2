"""Soak: the chaos test at length, with a trial count, reporting what went wrong in numbers.

It runs tests/e2e/test_chaos.py (the same faults: SIGKILLed robot agents, SIGKILLed and restarted
platform processes, an S3 proxy that answers 503, drops connections and flips bytes, doing S3's
checksum check that moto lacks) with more trials, more episodes to keep the agents busy, and a
longer time cap, then prints the test's counts: trials, agents killed with work to do, platform
restarts, faults injected, episodes, and lost / duplicated / corrupt / partial, which must all be
0. CI runs the test's short version (50 trials at most, 240 s); this is the long one.

A trial is one agent start, SIGKILLed after 0-1 s (or finding nothing to do). An agent start
costs ~1.75 s on 2 idle cores, so 1,000 trials take 40-60 minutes here; --max-minutes stops the
trials earlier (the count says how many ran), then the network heals and every robot drains.

    python benchmarks/soak.py --trials 1000 [--max-minutes 60] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = ("lost", "duplicated", "never_recorded", "corrupt", "partial", "refused")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="cap on the trials phase")
    parser.add_argument(
        "--episodes-per-robot",
        type=int,
        default=None,
        help="default: enough to keep 3 robots busy (trials / 12)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="replays the random choices (timing still varies)"
    )
    args = parser.parse_args()
    if args.trials < 1 or args.max_minutes <= 0:
        parser.error("--trials and --max-minutes must be positive")
    episodes = args.episodes_per_robot or max(4, args.trials // 12)
    with tempfile.TemporaryDirectory(prefix="wamfleet-soak-") as tmp:
        report = Path(tmp) / "counts.json"
        env = os.environ | {
            "WAMFLEET_CHAOS_TRIALS": str(args.trials),
            "WAMFLEET_CHAOS_EPISODES_PER_ROBOT": str(episodes),
            "WAMFLEET_CHAOS_TRIALS_CAP_S": str(args.max_minutes * 60),
            "WAMFLEET_CHAOS_REPORT": str(report),
        }
        if args.seed is not None:
            env["WAMFLEET_CHAOS_SEED"] = str(args.seed)
        print(
            f"soak: up to {args.trials} trials within {args.max_minutes:.0f} min,"
            f" 3 robots x {episodes} episodes",
            flush=True,
        )
        started = time.monotonic()
        test = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/e2e/test_chaos.py"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.monotonic() - started
        lines = [
            line
            for line in test.stdout.splitlines()
            if line.startswith(("chaos", "proxy:", "observer:", "time:"))
        ]
        print("\n".join(lines))
        if not report.exists():
            print(test.stdout[-4000:], test.stderr[-4000:], sep="\n")
            print(f"soak: the chaos test ended (exit {test.returncode}) before counting; see above")
            sys.exit(2)
        counts = json.loads(report.read_text())
    faults, c = counts["faults"], counts
    drops = faults["drop_request"] + faults["drop_response"]
    print(
        f"soak: {c['trials']} trials ({c['killed_at_work']} agents SIGKILLed with episodes to upload,"
        f" {c['killed']} SIGKILLed in all), {c['platform_restarts']} platform restarts,"
        f" {faults['slow_down']} x 503, {drops} dropped connections,"
        f" {faults['flip_byte']} flipped bytes ({faults['refused_checksum']} refused as BadDigest);"
        f" {c['episodes']} episodes, {c['bytes'] / 1e6:.1f} MB; chaos {c['chaos_s'] / 60:.1f} min,"
        f" whole soak {took / 60:.1f} min; seed {c['seed']}"
    )
    print("soak: " + ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in COUNTS))
    if counts["trials"] < args.trials:
        print(
            f"soak: {counts['trials']} of the {args.trials} trials asked for ran"
            f" within {args.max_minutes:.0f} min"
        )
    bad = any(counts[k] for k in COUNTS)
    print(f"soak: chaos test {'passed' if test.returncode == 0 else f'FAILED (exit {test.returncode})'}")
    sys.exit(1 if bad or test.returncode else 0)


if __name__ == "__main__":
    main()
