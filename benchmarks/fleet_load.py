"""Fleet load: hundreds of robots uploading through 1, 2 and 4 platform API replicas.

Each replica is a `wamfleet platform serve` process; they share one PostgreSQL catalog (a fresh
database on 127.0.0.1:5432, dropped at the end) and one S3 store (moto's server, in a process of
its own). The robots are the real agent's Uploader on threads (no simulator): their episode
bundles are recorded once before timing. Robot i talks to replica i mod N, as behind a load
balancer that keeps a robot's connection. Per replica count it prints commits/s (and per
process), commit p50/p99, the end-to-end upload rate against a raw `minio` fput of the same bytes
with as many threads (same run, same store), failed requests, and then checks the catalog and
the store: every episode committed exactly once (one row, one `episode.commit` audit entry),
its objects all in the store; lost and duplicated are counted, and must be 0.

Everything runs on this machine: on a 2-core box the replicas, moto, PostgreSQL and the robots
share the same cores, so the knee it reports is where this box saturates, not a cluster's.

    python benchmarks/fleet_load.py [--robots 200] [--episodes-per-robot 2] [--replicas 1,2,4]
    python benchmarks/fleet_load.py --quick                       # ~1 minute: 40 robots, 1 and 2 replicas
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from minio import Minio
from sqlalchemy import create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (
    ACCESS_KEY,
    ADMIN_TOKEN,
    PLATFORM_BUCKET,
    REGION,
    SECRET_KEY,
    Fleet,
    Result,
    embodiment,
    frame_pool,
    measure,
    prepare,
)

from wamfleet.platform.catalog.tables import AuditEntry, Episode
from wamfleet.platform.cli.admin_client import AdminClient

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TODAY_COMMITS_PER_S = 10.0  # one process, benchmarks/ingest.py before issue 21: 4-11 commits/s
TARGET_PER_PROCESS = 10 * TODAY_COMMITS_PER_S
TARGET_RATIO = 0.5
KNEE_GAIN = 1.15  # more replicas that add less than 15% commits/s: the knee


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before answering")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def moto_server(log_dir: Path) -> Iterator[tuple[str, int]]:
    """moto's S3 in its own process, so the robots' threads do not share its interpreter."""
    port = free_port()
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/", proc, 60, "moto")
            yield f"127.0.0.1:{port}", proc.pid
        finally:
            stop(proc)


@contextmanager
def fresh_database(url: str | None) -> Iterator[str]:
    """The catalog: `url` as given, or a new database on the local PostgreSQL, dropped after."""
    if url is not None:
        yield url
        return
    name = f"wamfleet_fleetload_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def replicas(n: int, catalog_url: str, endpoint: str, root: Path) -> Iterator[tuple[list[str], list[int]]]:
    """`n` `wamfleet platform serve` processes on one catalog and one bucket, started together."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for i in range(n):
            port = free_port()
            env = os.environ | {
                "WAMFLEET_DATA_DIR": str(root / f"replica-{n}-{i}"),
                "WAMFLEET_CATALOG_URL": catalog_url,
                "WAMFLEET_STORAGE_BACKEND": "s3",
                "WAMFLEET_S3_ENDPOINT": endpoint,
                "WAMFLEET_S3_ACCESS_KEY": ACCESS_KEY,
                "WAMFLEET_S3_SECRET_KEY": SECRET_KEY,
                "WAMFLEET_S3_REGION": REGION,
                "WAMFLEET_S3_BUCKET": PLATFORM_BUCKET,
                "WAMFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
            }
            log = open(root / f"replica-{n}-{i}.log", "wb")  # noqa: SIM115 (closed with the process)
            cmd = [
                sys.executable,
                "-m",
                "wamfleet.platform.cli.main",
                "platform",
                "serve",
                "--port",
                str(port),
            ]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            urls.append(f"http://127.0.0.1:{port}")
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            wait_http(f"{url}/healthz", proc, 120, f"replica {i} of {n}")
        yield urls, [p.pid for p in procs]
    finally:
        for proc in procs:
            stop(proc)


@contextmanager
def work_dir(keep: Path | None) -> Iterator[str]:
    """Bundles, spools and every process's log: kept in `keep` when given (to read the logs)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield str(keep)
        return
    with tempfile.TemporaryDirectory(prefix="wamfleet-fleet-load-") as tmp:
        yield tmp


@dataclass
class Count:
    expected: int
    lost: int
    duplicated: int
    incomplete: int  # in the catalog, but objects missing or of the wrong size in the store


def count(fleet: Fleet, catalog_url: str, endpoint: str) -> Count:
    """Every bundle the robots held, against the catalog's rows and audit and the store's keys."""
    manifests = [m for ms in fleet.manifests for m in ms]
    ids = [str(m.episode_id) for m in manifests]
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            rows = set(conn.scalars(select(Episode.episode_id).where(Episode.episode_id.in_(ids))))
            query = (
                select(AuditEntry.target, func.count())
                .where(AuditEntry.action == "episode.commit", AuditEntry.target.in_(ids))
                .group_by(AuditEntry.target)
            )
            commits = {str(target): int(n) for target, n in conn.execute(query)}
    finally:
        engine.dispose()
    s3 = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    incomplete = 0
    for manifest in manifests:
        if str(manifest.episode_id) not in rows:
            continue
        stored = {
            o.object_name: o.size
            for o in s3.list_objects(PLATFORM_BUCKET, prefix=manifest.prefix, recursive=True)
        }
        if any(stored.get(manifest.prefix + e.path) != e.size for e in manifest.files):
            incomplete += 1
    return Count(
        expected=len(ids),
        lost=len(set(ids) - rows),
        duplicated=sum(max(0, commits.get(i, 0) - 1) for i in ids),
        incomplete=incomplete,
    )


@dataclass
class Run:
    replicas: int
    result: Result
    count: Count
    platform_cpu_s: float  # all replicas, during the timed run
    store_cpu_s: float  # moto


def run(args: argparse.Namespace) -> list[Run]:
    spec = embodiment(args.size)
    pool = frame_pool(spec, 2 * args.frames, args.noise)
    runs: list[Run] = []
    deadline = time.monotonic() + args.max_seconds
    with (
        work_dir(args.work) as tmp,
        moto_server(Path(tmp)) as (endpoint, moto),
    ):
        s3 = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
        s3.make_bucket(PLATFORM_BUCKET)
        with fresh_database(args.catalog_url) as catalog_url:
            for n in args.replicas:
                if time.monotonic() > deadline:
                    print(f"{n} replicas: skipped, --max-seconds {args.max_seconds:.0f} reached")
                    continue
                with replicas(n, catalog_url, endpoint, Path(tmp)) as (urls, pids):
                    admin = AdminClient(urls[0], ADMIN_TOKEN)
                    try:
                        if not runs:
                            admin.register_embodiment(spec)
                        start = time.perf_counter()
                        robots = Path(tmp) / "robots"
                        warm = prepare(admin, robots, f"warm{n}", n, 1, spec, pool, args.frames)
                        fleet = prepare(
                            admin,
                            robots,
                            f"r{n}",
                            args.robots,
                            args.episodes_per_robot,
                            spec,
                            pool,
                            args.frames,
                        )
                        size_kb = fleet.total_bytes / fleet.episodes / 1e3
                        took = time.perf_counter() - start
                        print(
                            f"{n} replicas: {fleet.episodes} bundles of {size_kb:.0f} KB recorded for"
                            f" {fleet.n} robots in {took:.1f} s (untimed)",
                            flush=True,
                        )
                        measure(warm, urls, endpoint, 1)  # each replica's first requests and connections
                        before = [cpu_seconds(p) for p in [*pids, moto]]
                        wall_start = time.perf_counter()
                        result = measure(fleet, urls, endpoint, args.baseline_repeats)
                        # The baseline's fput passes ran on moto too: count moto only while robots did.
                        used = [cpu_seconds(p) - b for p, b in zip([*pids, moto], before, strict=True)]
                        share = result.wall_s / max(time.perf_counter() - wall_start, result.wall_s)
                    finally:
                        admin.close()
                runs.append(
                    Run(n, result, count(fleet, catalog_url, endpoint), sum(used[:-1]), used[-1] * share)
                )
                report_line(runs[-1])
    return runs


def rates(r: Run) -> tuple[float, float, float]:
    """(commits/s, end-to-end MB/s, raw fput MB/s)."""
    res = r.result
    return (
        res.episodes / res.wall_s,
        res.agent_bytes / res.wall_s / 1e6,
        res.baseline_bytes / res.baseline_wall_s / 1e6,
    )


def report_line(r: Run) -> None:
    commits, ingest, fput = rates(r)
    p50, p99 = np.percentile(np.asarray(r.result.commit_s) * 1000, [50, 99])
    c = r.count
    print(
        f"{r.replicas:>8} {r.result.n:>6} {r.result.episodes:>8} {commits:>9.1f}"
        f" {commits / r.replicas:>11.1f}"
        f" {p50:>8.0f} ms {p99:>6.0f} ms {ingest:>7.1f} {fput:>7.1f} {ingest / fput:>6.2f}"
        f" {r.result.failures:>6} {c.lost:>5} {c.duplicated:>5} {c.incomplete:>5}",
        flush=True,
    )


HEADER = (
    f"{'replicas':>8} {'robots':>6} {'episodes':>8} {'commits/s':>9} {'per process':>11} {'commit p50':>11}"
    f" {'p99':>9} {'MB/s':>7} {'fput':>7} {'ratio':>6} {'errors':>6} {'lost':>5} {'dup':>5} {'part':>5}"
)


def verdicts(runs: list[Run]) -> None:
    if not runs:
        return
    best = max(runs, key=lambda r: rates(r)[0] / r.replicas)
    per_process = rates(best)[0] / best.replicas
    print(
        f"target per-process commits/s >= {TARGET_PER_PROCESS:.0f} (10x today's ~{TODAY_COMMITS_PER_S:.0f}):"
        f" best {per_process:.1f} at {best.replicas} replica(s):"
        f" {'met' if per_process >= TARGET_PER_PROCESS else 'MISSED'}"
    )
    ratios = [rates(r)[1] / rates(r)[2] for r in runs]
    print(
        f"target end to end >= {TARGET_RATIO}x a raw fput of the same bytes: "
        + ", ".join(f"{r.replicas} replica(s) {x:.2f}" for r, x in zip(runs, ratios, strict=True))
        + f": {'met' if max(ratios) >= TARGET_RATIO else 'MISSED'}"
    )
    ordered = sorted(runs, key=lambda r: r.replicas)
    knee = ordered[-1].replicas
    for a, b in itertools.pairwise(ordered):
        if rates(b)[0] < KNEE_GAIN * rates(a)[0]:
            knee = a.replicas
            break
    scaling = ", ".join(f"{r.replicas}: {rates(r)[0]:.1f}" for r in ordered)
    print(
        f"commits/s by replicas ({scaling}); knee at {knee} replica(s) (the next adds < {KNEE_GAIN - 1:.0%})"
    )
    lost = sum(r.count.lost for r in runs)
    dup = sum(r.count.duplicated for r in runs)
    part = sum(r.count.incomplete for r in runs)
    total = sum(r.count.expected for r in runs)
    for r in ordered:
        commits = r.result.episodes
        platform_ms, store_ms = 1000 * r.platform_cpu_s / commits, 1000 * r.store_cpu_s / commits
        print(
            f"{r.replicas} replica(s): CPU per episode: platform {platform_ms:.0f} ms (all replicas),"
            f" store (moto) ~{store_ms:.0f} ms; one core would hold ~{1000 / platform_ms:.0f} commits/s"
            f" of platform work, ~{1000 / store_ms:.0f} of moto's"
        )
        if r.result.failure_kinds:
            kinds = ", ".join(f"{k} x{v}" for k, v in r.result.failure_kinds.most_common())
            print(f"{r.replicas} replica(s): failed requests (each retried by the agent): {kinds}")
    print(f"final count: {total} episodes uploaded, {lost} lost, {dup} duplicated, {part} incomplete")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--robots", type=int, default=200)
    parser.add_argument("--episodes-per-robot", type=int, default=2)
    parser.add_argument("--replicas", default="1,2,4", help="comma-separated replica counts")
    parser.add_argument("--frames", type=int, default=45, help="frames per episode (15 fps)")
    parser.add_argument("--size", type=int, default=96, help="camera height and width (even)")
    parser.add_argument("--noise", type=int, default=32, help="pixel noise 0-255: more noise, bigger videos")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="fput passes per run (median)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="no new replica count after this")
    parser.add_argument("--catalog-url", default=None, help="default: a fresh database on 127.0.0.1:5432")
    parser.add_argument("--work", type=Path, default=None, help="keep bundles and logs here")
    parser.add_argument("--quick", action="store_true", help="40 robots, 1 episode each, 1 and 2 replicas")
    args = parser.parse_args()
    if args.quick:
        args.robots, args.episodes_per_robot, args.replicas = 40, 1, "1,2"
    args.replicas = [int(v) for v in args.replicas.split(",") if v.strip()]
    if (
        not args.replicas
        or min(args.replicas) < 1
        or min(args.robots, args.episodes_per_robot, args.frames) < 1
    ):
        parser.error("--replicas, --robots, --episodes-per-robot and --frames must be positive")
    started = time.monotonic()
    print(
        f"fleet load: {args.robots} robots x {args.episodes_per_robot} episodes, {args.frames} frames of 2x"
        f"{args.size}px; replicas {args.replicas} on one PostgreSQL catalog + one moto S3 process;"
        f" {os.cpu_count()} CPUs"
    )
    print(HEADER)
    runs = run(args)
    verdicts(runs)
    print(f"total {time.monotonic() - started:.0f} s")
    if any(r.count.lost or r.count.duplicated or r.count.incomplete for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
