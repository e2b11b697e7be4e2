"""Soak: the chaos test's faults for a thousand agent trials or more, counted instead of asserted.

tests/e2e/test_chaos.py proves on ~30 trials that an episode reaches the catalog exactly once and
whole whatever fails on the way; rare interleavings need far more trials to turn up. This runs
the same harness (tests/support/chaos.py) at length: moto's S3 behind the fault-injecting proxy
(503s, dropped connections, flipped bytes refused by S3's checksum check), a platform process
SIGKILLed and restarted at random, and --robots robots whose agents run in parallel, each trial
one `wamfleet agent run --once` SIGKILLed 0-1 s after it is ready (a --run-to-end-share of them
left to end by themselves). Each robot keeps recording: before every trial its spool is topped
up to --spool-depth ready episodes, so agents die with work in hand. At --trials trials, or at
--max-minutes of trials (it says so), the network heals, restarts stop, every spool is drained by
healthy agents, and the catalog (API and table) and the store (read straight from moto) are
judged against what the robots recorded.

The platform stays up 5-15 s between SIGKILLs, not the test's 2-6 s: a restart takes seconds on
a busy box, and at the test's pace the platform was down more than half the time, so most trials
met only a refused connection.

Printed: trials run, agents killed, platform restarts, proxy faults by kind, episodes recorded,
then the counts that must be 0: lost (recorded, never listed), duplicated (listed twice, or table
rows beyond the listing), corrupt (stored bytes differ), partial (listed while incomplete, listed
but incomplete at the end, or under the store's final keys without a catalog entry), plus episodes
refused and never recorded; and wall time, trials per minute. The exit status is 1 if any count
is not 0, 2 if the harness itself failed (a platform that would not start, a stuck agent start).

The catalog is PostgreSQL (a fresh database on 127.0.0.1:5432, dropped afterwards) when a server
listens, SQLite otherwise. Run from the repository root:

    python benchmarks/soak.py --trials 1000 [--robots 3] [--seed S] [--max-minutes 80]
                              [--platform-restarts-every 10] [--spool-depth 3]
                              [--run-to-end-share 0.1] [--catalog postgresql|sqlite] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.* from the repository root

from tests.conftest import PG_ADMIN_URL, make_s3_store, postgres_listening
from tests.support.chaos import (
    FAULTS,
    FRAMES,
    HEADER_CUT_SHARE,
    KILL_AFTER_S,
    Fleet,
    Observer,
    Platform,
    Recorded,
    Restarter,
    Verdict,
    embodiment,
    judge,
    platform_env,
    record_one,
    register,
    running,
)
from tests.support.faulty_proxy import FaultyProxy
from tests.support.postgres import scratch_database
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.net import free_port

# The observer lists the whole catalog each poll: big pages keep that a few requests at 2,000
# episodes, and the full store re-check (thousands of moto reads) runs every few minutes only;
# each new episode is still checked the moment it is first listed.
PAGE_SIZE = 1000
MAX_PAGES = 1000
OBSERVE_EVERY_S = 0.5
RECHECK_EVERY = 600
# Under the proxy's faults a platform start fails now and then (the store unreachable while it
# starts); hundreds of restarts need more tries each than the test's handful.
PLATFORM_START_ATTEMPTS = 30
PROGRESS_EVERY_S = 60.0


@contextlib.contextmanager
def catalog(kind: str, directory: Path) -> Iterator[str]:
    """A fresh catalog: a PostgreSQL database dropped afterwards, or a SQLite file."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'catalog.db'}"
        return
    with scratch_database(PG_ADMIN_URL, "wamfleet_soak") as url:
        yield url


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, as the test's fixture runs it (in this process). Its request
    log, and the tracebacks the proxy's cut requests cause, go to `log`, not the terminal."""
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(logging.FileHandler(log))
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@dataclass
class Trials:
    """Hands out trial numbers to the robots' threads until the count or the deadline is reached."""

    total: int
    deadline: float  # time.monotonic()
    started: int = 0
    stopped_by_deadline: bool = False
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    halt: threading.Event = field(default_factory=threading.Event)

    def claim(self) -> bool:
        with self.lock:
            if self.halt.is_set() or self.started >= self.total:
                return False
            if time.monotonic() >= self.deadline:
                self.stopped_by_deadline = True
                return False
            self.started += 1
            return True

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
        self.halt.set()


def robot_loop(
    robot_id: str,
    fleet: Fleet,
    trials: Trials,
    spec: EmbodimentSpec,
    recorded: dict[str, Recorded],
    pristine_root: Path,
    rng: random.Random,
    spool_depth: int,
    run_to_end_share: float,
    restarter: Restarter,
) -> None:
    """One robot: records until its spool holds `spool_depth` episodes, runs a trial, again."""
    try:
        while trials.claim():
            if restarter.error is not None:
                trials.fail(f"restarting the platform failed: {restarter.error!r}")
                return
            for _ in range(spool_depth - len(fleet.ready(robot_id))):
                episode = record_one(
                    fleet, robot_id, spec, pristine_root, rng.randint(*FRAMES), f"soak task {len(recorded)}"
                )
                recorded[episode.episode_id] = episode  # known before any agent can upload it
            to_end = rng.random() < run_to_end_share
            fleet.kill_trial(robot_id, None if to_end else rng.uniform(*KILL_AFTER_S))
    except BaseException as exc:  # noqa: BLE001 - reported with the counts, stops the other robots
        trials.fail(f"{robot_id}: {type(exc).__name__}: {exc}")


def progress(fleet: Fleet, restarter: Restarter, recorded: dict[str, Recorded], t0: float) -> str:
    minutes = (time.monotonic() - t0) / 60
    done = len(fleet.trials)
    return (
        f"soak: {minutes:.1f} min, {done} trials done ({done / max(minutes, 1e-9):.1f}/min), "
        f"{restarter.restarts} platform restarts, {len(recorded)} episodes recorded"
    )


def report(
    args: argparse.Namespace,
    seed: int,
    fleet: Fleet,
    trials: Trials,
    restarter: Restarter,
    platform: Platform,
    faults: dict[str, int],
    observer: Observer,
    verdict: Verdict,
    drain_runs: int,
    spools_left: dict[str, list[str]],
    chaos_s: float,
    wall_s: float,
    catalog_kind: str,
) -> bool:
    """Prints the soak's figures; returns whether every count that must be 0 is 0."""
    done = fleet.trials
    killed = sum(1 for t in done if not t.exited_by_itself)
    killed_at_work = sum(1 for t in done if t.ready_before and not t.exited_by_itself)
    to_end = [t for t in done if t.killed_after_s is None]
    ended_clean = sum(1 for t in to_end if t.returncode == 0)
    timed_out = sum(1 for t in to_end if t.timed_out)
    recorded = verdict.recorded
    megabytes = sum(e.manifest.total_bytes for e in recorded.values()) / 1e6
    print(f"soak: seed {seed}, {len(fleet.robots)} robots, catalog {catalog_kind}")
    print(
        f"trials: {len(done)} of {args.trials} run"
        + (f" (stopped at --max-minutes {args.max_minutes:g})" if trials.stopped_by_deadline else "")
        + f"; {killed} agents SIGKILLed ({killed_at_work} with episodes to upload), "
        f"{len(to_end)} left to run to their end ({ended_clean} exit 0, {timed_out} timed out)"
    )
    print(
        f"platform: {restarter.restarts} restarts (SIGKILL), {platform.starts} starts, "
        f"{platform.failed_starts} failed starts; down {platform.down_s / 60:.1f} min"
        f" ({platform.down_s / max(chaos_s, 1e-9):.0%} of the trials phase)"
    )
    print(
        f"proxy: {faults['slow_down']} x 503, {faults['drop_request']} request drops, "
        f"{faults['drop_response']} response drops, {faults['flip_byte']} flipped bytes "
        f"({faults['refused_checksum']} refused as BadDigest), {faults['connections']} connections"
    )
    print(
        f"episodes: {len(recorded)} recorded ({megabytes:.1f} MB), "
        f"{len(set(verdict.listed))} in the catalog; "
        f"healing took {drain_runs} agent runs; {len(verdict.staging_left)} staging objects left "
        f"{verdict.staging_by_status()}; observer: {observer.polls} listings, {observer.checks} store checks"
    )
    sessions: dict[str, int] = {}
    for status in verdict.statuses.values():
        sessions[status] = sessions.get(status, 0) + 1
    print(f"upload sessions: {len(verdict.statuses)} opened {sessions}")
    counts = {
        "lost": len(verdict.lost),
        "duplicated": verdict.duplicated,
        "corrupt": len(verdict.corrupt_episodes),
        "partial": verdict.partial,
        "refused": len(verdict.rejected),
        "never recorded": len(verdict.never_recorded),
    }
    print("counts: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    rows_ok = len(verdict.rows) == len(recorded)
    if not rows_ok:
        print(f"catalog table: {len(verdict.rows)} episode rows, {len(recorded)} episodes recorded")
    if spools_left:
        print(f"spools not empty after draining: { {r: len(v) for r, v in spools_left.items()} }")
    chaos_min = chaos_s / 60
    print(
        f"time: wall {wall_s / 60:.1f} min, trials phase {chaos_min:.1f} min, "
        f"{len(done) / max(chaos_min, 1e-9):.1f} trials/min"
    )
    problems = (
        verdict.lost and [f"lost: {sorted(verdict.lost)}"],
        verdict.corrupt,
        verdict.incomplete,
        verdict.violations,
        verdict.unlisted_in_store and [f"in the store, not the catalog: {sorted(verdict.unlisted_in_store)}"],
        verdict.rejected and [f"refused: {verdict.rejected}"],
    )
    for lines in problems:
        for line in (lines or [])[:20]:
            print(f"  {line}")
    return not any(counts.values()) and rows_ok and not spools_left


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=1000, help="agent trials to run (default 1000)")
    parser.add_argument("--robots", type=int, default=3, help="robots, each running its trials in turn")
    parser.add_argument("--seed", type=int, default=None, help="replays the random choices, not the timing")
    parser.add_argument("--max-minutes", type=float, default=80.0, help="cap on the trials phase")
    parser.add_argument(
        "--platform-restarts-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="mean seconds the platform stays up between SIGKILLs (uniform in 0.5x-1.5x; default 10)",
    )
    parser.add_argument("--spool-depth", type=int, default=3, help="ready episodes per robot before a trial")
    parser.add_argument(
        "--run-to-end-share", type=float, default=0.1, help="share of trials whose agent is not killed"
    )
    parser.add_argument("--catalog", choices=("postgresql", "sqlite"), default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep spools and logs in this directory")
    args = parser.parse_args()
    if args.trials < 1 or args.robots < 1 or args.spool_depth < 1 or args.max_minutes <= 0:
        parser.error("--trials, --robots, --spool-depth and --max-minutes must be positive")
    if not 0.0 <= args.run_to_end_share <= 1.0 or args.platform_restarts_every <= 0:
        parser.error("--run-to-end-share must be in [0, 1] and --platform-restarts-every positive")
    kind = args.catalog or ("postgresql" if postgres_listening() else "sqlite")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    # A plain kill of the soak still stops the platform and the agents it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wamfleet-soak-", dir=args.keep))
    print(
        f"soak: {args.trials} trials, {args.robots} robots, at most {args.max_minutes:g} min of trials, "
        f"catalog {kind}, seed {seed}, work dir {work}",
        flush=True,
    )
    try:
        return soak(args, kind, seed, rng, work)
    except KeyboardInterrupt:
        print("soak: interrupted", flush=True)
        return 130
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def soak(args: argparse.Namespace, kind: str, seed: int, rng: random.Random, work: Path) -> int:
    t0 = time.monotonic()
    spec = embodiment()
    robots = [f"soak-{k + 1}" for k in range(args.robots)]
    bucket = f"soak-{uuid.uuid4().hex[:12]}"
    (work / "platform").mkdir()
    every = args.platform_restarts_every
    with (
        moto_server(work / "moto.log") as moto_endpoint,
        catalog(kind, work) as catalog_url,
        open(work / "platform.log", "ab") as platform_log,
        open(work / "agents.log", "ab") as agent_log,
    ):
        proxy = FaultyProxy(
            moto_endpoint,
            seed=rng.randrange(1 << 32),
            header_cut_share=HEADER_CUT_SHARE,
            verify_checksums=True,
        ).start()
        env = platform_env(
            s3_endpoint=proxy.endpoint, bucket=bucket, catalog_url=catalog_url, data_dir=work / "platform"
        )
        platform = Platform(env, free_port(), platform_log, start_attempts=PLATFORM_START_ATTEMPTS)
        restarter = Restarter(platform, random.Random(rng.randrange(1 << 32)), (every / 2, every * 1.5))
        observer: Observer | None = None
        threads: list[threading.Thread] = []
        trials = Trials(args.trials, time.monotonic() + args.max_minutes * 60)

        def stop_threads() -> None:
            trials.halt.set()
            for thread in threads:
                thread.join(timeout=180)

        def stop_observer() -> None:  # the observer starts once the platform is up
            if observer is not None:
                observer.stop()

        with running(proxy.stop, platform.stop, restarter.stop, stop_observer, stop_threads):
            platform.start()
            tokens = register(platform.url, spec, robots)
            fleet = Fleet(work / "spools", platform.url, tokens, agent_log)
            recorded: dict[str, Recorded] = {}
            moto = make_s3_store(moto_endpoint, bucket, create_bucket=False)
            observer = Observer(
                platform.url,
                moto,
                recorded,
                page_size=PAGE_SIZE,
                max_pages=MAX_PAGES,
                poll_s=OBSERVE_EVERY_S,
                recheck_every=RECHECK_EVERY,
            )
            observer.start()
            watcher = observer

            proxy.set_faults(**FAULTS)
            restarter.start()
            chaos_t0 = time.monotonic()
            trials.deadline = chaos_t0 + args.max_minutes * 60
            for robot_id in robots:
                thread = threading.Thread(
                    target=robot_loop,
                    name=f"soak-{robot_id}",
                    args=(
                        robot_id,
                        fleet,
                        trials,
                        spec,
                        recorded,
                        work / "pristine",
                        random.Random(rng.randrange(1 << 32)),
                    ),
                    kwargs={
                        "spool_depth": args.spool_depth,
                        "run_to_end_share": args.run_to_end_share,
                        "restarter": restarter,
                    },
                    daemon=True,
                )
                thread.start()
                threads.append(thread)
            next_progress = time.monotonic() + PROGRESS_EVERY_S
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=1.0)
                    if time.monotonic() >= next_progress:
                        print(progress(fleet, restarter, recorded, chaos_t0), flush=True)
                        next_progress += PROGRESS_EVERY_S
            chaos_s = time.monotonic() - chaos_t0
            if trials.errors:
                print("soak: the harness failed, no counts:\n  " + "\n  ".join(trials.errors), flush=True)
                return 2

            # Heal: no more faults or restarts; each robot's agent runs until its spool is empty.
            proxy.pass_through()
            restarter.stop()
            if restarter.error is not None:
                print(f"soak: restarting the platform failed, no counts: {restarter.error!r}", flush=True)
                return 2
            print(f"soak: trials over after {chaos_s / 60:.1f} min; healing and draining", flush=True)
            platform.ensure_up()
            drain_runs = fleet.drain()
            spools_left = {r: fleet.ready(r) for r in robots if fleet.ready(r)}
            observer.settle()
            verdict = judge(platform.url, moto, catalog_url, fleet, recorded, observer, PAGE_SIZE, MAX_PAGES)
            faults = proxy.counts()

    ok = report(
        args,
        seed,
        fleet,
        trials,
        restarter,
        platform,
        faults,
        watcher,
        verdict,
        drain_runs,
        spools_left,
        chaos_s,
        time.monotonic() - t0,
        kind,
    )
    print(f"soak: {'PASS: all counts 0' if ok else 'FAIL: see the counts above'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
