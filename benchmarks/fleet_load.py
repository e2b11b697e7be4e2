"""Fleet load: hundreds of robots uploading through 1, 2 and 4 platform API replicas.

What it measures. Each replica is a `wamfleet platform serve` process; all of them share one
PostgreSQL catalog (a fresh database on 127.0.0.1:5432, dropped at the end) and one S3 store
(moto's ThreadedMotoServer, as benchmarks/ingest.py uses it, but in a process of its own so it
does not share an interpreter with the robots). The robots are the real agent (a Spool, an
Uploader and the PlatformClient on one thread each, no simulator): open an upload session, PUT
each file to its presigned URL, commit. Robot i talks to replica i mod N, as behind a load
balancer that keeps a robot's connection. Bundles are recorded once (a few templates) and every
robot's episodes are hard links to them under a fresh episode id and manifest, which the format
allows: the ids live only in manifest.json, so each episode is a distinct bundle to the platform.

All robots are released together and each uploads its episodes back to back (a closed loop: the
fleet's capacity, not a robot's latency when idle). Per replica count it prints commits/s (and
per process), commit p50/p99, the end-to-end rate (bytes committed / wall time of the whole
ingest) against a raw `minio` fput of the same bytes with as many threads (same run, same
store, as benchmarks/ingest.py does it), failed requests (each retried by the agent), and where
the CPU went (replicas, moto, PostgreSQL backends, robots, other processes on the box). Then it
checks the catalog and the store: every bundle committed exactly once, whole; the catalog's
episode count equal to the number of distinct bundles uploaded. Lost, duplicated or never
committed episodes make it exit 1.

Bounds: each robot uploads --episodes-per-robot bundles, each request retried at most 8 times
(the agent's own limit); robots start no new episode once their replica count's share of
--max-seconds is spent (those are printed as skipped, never counted as committed).

Everything runs on this machine: on a small box the replicas, moto, PostgreSQL and the robots
share the same cores, so the knee it reports is where this box saturates, not where a cluster does.

    python benchmarks/fleet_load.py [--robots 400] [--episodes-per-robot 3] [--replicas 1,2,4]
                                    [--max-seconds 720] [--work DIR]   # DIR keeps bundles and logs
    python benchmarks/fleet_load.py --quick                            # ~1 minute, fewer robots
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from minio import Minio
from sqlalchemy import create_engine, func, text
from sqlalchemy import select as sql_select

sys.path.append(str(Path(__file__).resolve().parents[1]))  # `python benchmarks/fleet_load.py`
from benchmarks.ingest import (
    ACCESS_KEY,
    ADMIN_TOKEN,
    PLATFORM_BUCKET,
    REGION,
    SECRET_KEY,
    Fleet,
    Images,
    TimedClient,
    embodiment,
    frame_pool,
    measure_baseline,
    run_threads,
    write_bundle,
)
from tests.support.postgres import scratch_database
from wamfleet.fleet_agent.client import RejectedError
from wamfleet.fleet_agent.episode_format import BundleError, write_manifest
from wamfleet.fleet_agent.spool import Spool
from wamfleet.fleet_agent.uploader import GaveUp, Uploader, UploadReport
from wamfleet.platform.catalog.tables import AuditEntry, Episode
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.contracts.ingest import UploadTicket
from wamfleet.platform.entrypoint import WAMFLEET_CLI

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TODAY_COMMITS_PER_S = 10.0  # one process in benchmarks/ingest.py before issue 21: 4-11 commits/s
TARGET_PER_PROCESS = 10 * TODAY_COMMITS_PER_S
TARGET_RATIO = 0.5  # end to end against a raw fput of the same bytes
KNEE_GAIN = 1.15  # a replica count whose successor adds less than 15% commits/s is the knee
SATURATED = 0.85  # of a component's CPU capacity
CLK = os.sysconf("SC_CLK_TCK")
# moto's server as ingest.py and the tests start it, in its own process; werkzeug's per-request
# access log off as in ingest.py. It prints host:port, then serves until terminated.
MOTO_CHILD = """
import logging, threading
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
threading.Event().wait()
"""


@dataclass(frozen=True)
class Config:
    robots: int = 400
    episodes_per_robot: int = 3
    replicas: tuple[int, ...] = (1, 2, 4)
    frames: int = 90  # with size 160 and noise 32: ~0.45 MB per episode in 3 files
    size: int = 160
    noise: int = 32
    templates: int = 8
    baseline_repeats: int = 1
    max_seconds: float = 720.0
    catalog_url: str | None = None  # default: a fresh database through pg_admin_url
    pg_admin_url: str = PG_ADMIN_URL
    work: Path | None = None


# --quick: other defaults (options given explicitly still win), a ~1 minute run of the same replica counts.
QUICK = {"robots": 60, "episodes_per_robot": 1, "frames": 45, "size": 128, "max_seconds": 150.0}


# Processes -------------------------------------------------------------------------------


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def moto_server(log_dir: Path) -> Iterator[tuple[str, int]]:
    """(host:port, pid) of moto's ThreadedMotoServer running in a child process."""
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_CHILD], stdout=subprocess.PIPE, stderr=log, bufsize=0
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline().decode().strip() if ready else ""
            if not line:
                raise RuntimeError(f"moto did not start (see {log_dir / 'moto.log'})")
            yield line, proc.pid
        finally:
            stop(proc)


@contextmanager
def fresh_database(url: str | None, admin_url: str) -> Iterator[str]:
    """The catalog: `url` as given, or a new database on the PostgreSQL server, dropped after."""
    if url is not None:
        yield url
        return
    with scratch_database(admin_url, "wamfleet_fleetload") as scratch:
        yield scratch


@contextmanager
def replicas(n: int, catalog_url: str, endpoint: str, root: Path) -> Iterator[tuple[list[str], list[int]]]:
    """(URLs, pids) of n `wamfleet platform serve` processes on one catalog and one bucket."""
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
            cmd = [*WAMFLEET_CLI, "platform", "serve", "--port", str(port)]
            with open(root / f"replica-{n}-{i}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            wait_http(f"{url}/healthz", proc, 120, f"replica {i} of {n} (see {root}/replica-{n}-{i}.log)")
        yield urls, [p.pid for p in procs]
    finally:
        for proc in procs:
            stop(proc)


# CPU accounting ---------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc); None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK


def box_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy (not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLK


@dataclass
class CpuUse:
    """CPU seconds spent during the robots' timed window, by component."""

    wall_s: float
    replicas_s: float
    store_s: float
    catalog_s: float  # the PostgreSQL backends serving the catalog database
    robots_s: float  # this process: the robots' threads
    box_s: float

    @property
    def other_s(self) -> float:
        """Everything else on the machine: other work, PostgreSQL's own background processes."""
        return max(0.0, self.box_s - self.replicas_s - self.store_s - self.catalog_s - self.robots_s)

    def cores(self, seconds: float) -> float:
        return seconds / self.wall_s if self.wall_s > 0 else math.nan


class CpuMeter:
    """Samples the replicas, moto, the catalog's backends, this process and the box."""

    def __init__(self, replica_pids: list[int], store_pid: int, catalog_url: str) -> None:
        self.replica_pids = replica_pids
        self.store_pid = store_pid
        self.engine = create_engine(catalog_url)

    def backends(self) -> dict[int, float]:
        with self.engine.connect() as conn:
            pids = conn.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        found = {pid: proc_cpu_s(pid) for pid in pids}
        return {pid: s for pid, s in found.items() if s is not None}

    def sample(self) -> tuple[float, float, float, dict[int, float], float, float]:
        replicas = sum(proc_cpu_s(p) or 0.0 for p in self.replica_pids)
        store = proc_cpu_s(self.store_pid) or 0.0
        return time.perf_counter(), replicas, store, self.backends(), time.process_time(), box_busy_s()

    def between(
        self,
        a: tuple[float, float, float, dict[int, float], float, float],
        b: tuple[float, float, float, dict[int, float], float, float],
    ) -> CpuUse:
        # A backend first seen at the end was started during the window: all of its CPU counts.
        catalog = sum(s - a[3].get(pid, 0.0) for pid, s in b[3].items())
        return CpuUse(b[0] - a[0], b[1] - a[1], b[2] - a[2], catalog, b[4] - a[4], b[5] - a[5])

    def close(self) -> None:
        self.engine.dispose()


# Robots ---------------------------------------------------------------------------------


def record_templates(root: Path, spec: EmbodimentSpec, cfg: Config) -> list[tuple[Path, EpisodeManifest]]:
    """A few distinct bundles, recorded once with ingest.py's writer; episodes link to them."""
    pool: list[Images] = frame_pool(spec, 2 * cfg.frames, cfg.noise)
    spool = Spool(root / "templates")
    made = []
    for k in range(cfg.templates):
        manifest = write_bundle(spool, "template", spec, pool, cfg.frames, (k * 37) % len(pool))
        made.append((spool.dir("ready", str(manifest.episode_id)), manifest))
    return made


def clone_bundle(spool: Spool, robot_id: str, template: tuple[Path, EpisodeManifest]) -> EpisodeManifest:
    """A new episode of `robot_id` in its spool's ready/: the template's files hard-linked, and
    its own manifest (fresh UUIDv7, robot, start time; the files' sizes and sha256 unchanged)."""
    source, manifest = template
    episode_id = new_episode_id()
    directory = spool.dir("ready", str(episode_id))
    for entry in manifest.files:
        (directory / entry.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(source / entry.path, directory / entry.path)
    clone = EpisodeManifest.model_validate(
        manifest.model_dump()
        | {"episode_id": episode_id, "robot_id": robot_id, "started_at": datetime.now(UTC)}
    )
    write_manifest(directory, clone)
    return clone


def make_fleet(
    admin: AdminClient,
    root: Path,
    label: str,
    robots: int,
    episodes: int,
    spec: EmbodimentSpec,
    templates: list[tuple[Path, EpisodeManifest]],
) -> Fleet:
    """Registers the robots (robot ids `fl-<label>-rNNN`) and fills each one's spool."""
    fleet = Fleet(label)
    for i in range(robots):
        robot_id = f"fl-{label}-r{i:03d}"
        fleet.tokens.append(admin.robot_token(robot_id, spec.name))
        spool = Spool(root / label / robot_id)
        fleet.spools.append(spool)
        picks = [templates[(i * 3 + j) % len(templates)] for j in range(episodes)]
        fleet.manifests.append([clone_bundle(spool, robot_id, t) for t in picks])
    return fleet


class RobotClient(TimedClient):
    """ingest.py's TimedClient (PUTs and commits timed and their failures sorted), plus failed
    upload opens, so that every failed request of the robot flow is counted."""

    def open_upload(self, manifest: EpisodeManifest) -> UploadTicket:
        try:
            return super().open_upload(manifest)
        except Exception as exc:
            self._failed("open", exc)
            raise


@dataclass
class RobotsRun:
    wall_s: float
    clients: list[RobotClient]
    attempted: list[list[str]]  # per robot: the episode ids it started uploading
    acknowledged: list[list[str]]  # per robot: those the platform said were committed
    skipped: int  # not started: the time was up


def run_robots(fleet: Fleet, urls: list[str], stop_at: float) -> RobotsRun:
    """Every robot uploads its ready episodes on its own thread, all released together; one
    that is still busy at `stop_at` finishes its episode and starts no other."""
    clients = [RobotClient(urls[i % len(urls)], token) for i, token in enumerate(fleet.tokens)]
    # ingest.py's settings: a long retention (the fput baseline reads uploaded/), short backoffs.
    uploaders = [
        Uploader(spool, client, retention_s=3600.0, backoff_base_s=0.05, backoff_max_s=1.0)
        for spool, client in zip(fleet.spools, clients, strict=True)
    ]
    reports = [UploadReport() for _ in range(fleet.n)]
    attempted: list[list[str]] = [[] for _ in range(fleet.n)]
    skipped = [0] * fleet.n

    def work(i: int) -> None:
        for directory in fleet.spools[i].ready():
            if time.monotonic() >= stop_at:
                skipped[i] += 1
                continue
            attempted[i].append(directory.name)
            try:  # what Uploader.run_once does per episode, less its spool bookkeeping
                uploaders[i].upload_episode(directory, reports[i])
            except (RejectedError, BundleError) as exc:
                logging.getLogger(__name__).error("episode %s refused: %s", directory.name, exc)
            except GaveUp as exc:
                logging.getLogger(__name__).warning("episode %s not committed: %s", directory.name, exc)

    try:
        wall = run_threads(fleet.n, work)
    finally:
        for client in clients:
            client.close()
    return RobotsRun(wall, clients, attempted, [r.committed for r in reports], sum(skipped))


# The count --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every bundle the robots held, and what became of it, over the whole benchmark."""

    manifests: dict[str, EpisodeManifest] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)

    def add(self, fleet: Fleet, run: RobotsRun) -> None:
        self.manifests.update({str(m.episode_id): m for ms in fleet.manifests for m in ms})
        self.attempted.update(i for ids in run.attempted for i in ids)
        self.acknowledged.update(i for ids in run.acknowledged for i in ids)


@dataclass
class Count:
    uploaded: int  # distinct bundles the robots started uploading
    acknowledged: int  # of those, the ones the platform acknowledged as committed
    catalog_rows: int  # episodes in the catalog (of the scope's robots)
    catalog_distinct: int
    missing: int  # acknowledged, not in the catalog
    partial: int  # in the catalog, a file of it missing from the store or of another size
    duplicated: int  # recorded more than once: rows, `episode.commit` audit entries or store copies
    never_committed: int  # uploading started, not in the catalog (the robot gave up)
    unexpected: int  # in the catalog, not a bundle any robot uploaded
    orphans: int  # published in the store (a manifest.json), not in the catalog
    leftovers: int | None  # staging and scratch objects left in the store (whole run only)

    @property
    def lost(self) -> int:
        return self.missing + self.partial

    @property
    def exact(self) -> bool:
        """Every bundle uploaded is committed exactly once and whole, and nothing else is there."""
        return (
            self.lost == self.duplicated == self.never_committed == self.unexpected == self.orphans == 0
            and self.catalog_rows == self.catalog_distinct == self.uploaded == self.acknowledged
        )


def tally(ledger: Ledger, scope: str, catalog_url: str, endpoint: str) -> Count:
    """The ledger's bundles of robots whose id starts with `scope`, against the catalog's rows
    and commit audit entries and the store's objects (`scope` "": everything, leftovers too)."""
    mine = {i: m for i, m in ledger.manifests.items() if m.robot_id.startswith(scope)}
    attempted = {i for i in ledger.attempted if i in mine}
    acknowledged = {i for i in ledger.acknowledged if i in mine}
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            rows = list(
                conn.scalars(sql_select(Episode.episode_id).where(Episode.robot_id.startswith(scope)))
            )
            audits = Counter(
                {
                    str(target): int(n)
                    for target, n in conn.execute(
                        sql_select(AuditEntry.target, func.count())
                        .where(AuditEntry.action == "episode.commit")
                        .group_by(AuditEntry.target)
                    )
                }
            )
    finally:
        engine.dispose()
    catalog = {str(r) for r in rows}
    s3 = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    stored: dict[str, dict[str, int]] = {}  # episode id -> {path in its bundle: size}
    copies: Counter[str] = Counter()  # episode id -> robot prefixes holding a manifest of it
    for obj in s3.list_objects(PLATFORM_BUCKET, prefix=f"episodes/{scope}", recursive=True):
        name = obj.object_name or ""
        _, _robot, episode, path = name.split("/", 3)
        stored.setdefault(episode, {})[path] = obj.size or 0
        if path == MANIFEST_FILE:
            copies[episode] += 1
    leftovers = None
    if scope == "":
        leftovers = sum(
            1
            for p in ("uploads/", "commits/")
            for _ in s3.list_objects(PLATFORM_BUCKET, prefix=p, recursive=True)
        )

    def whole(episode_id: str) -> bool:
        files = stored.get(episode_id, {})
        sizes = {e.path: e.size for e in mine[episode_id].files}
        return MANIFEST_FILE in files and all(files.get(p) == s for p, s in sizes.items())

    return Count(
        uploaded=len(attempted),
        acknowledged=len(acknowledged),
        catalog_rows=len(rows),
        catalog_distinct=len(catalog),
        missing=len(acknowledged - catalog),
        partial=sum(1 for i in catalog & set(mine) if not whole(i)),
        duplicated=(len(rows) - len(catalog))
        + sum(max(0, audits[i] - 1) for i in catalog)
        + sum(max(0, c - 1) for c in copies.values()),
        never_committed=len(attempted - catalog),
        unexpected=len(catalog - attempted),
        orphans=len({i for i in copies if i not in catalog}),
        leftovers=leftovers,
    )


# One replica count ------------------------------------------------------------------------


@dataclass
class Phase:
    replicas: int
    robots: int
    bundles: int  # prepared for the timed run
    bundle_bytes: float  # mean bytes per bundle
    run: RobotsRun
    committed_bytes: int
    fput_bytes: int
    fput_wall_s: float
    cpu: CpuUse
    count: Count

    @property
    def committed(self) -> int:
        return sum(len(ids) for ids in self.run.acknowledged)

    @property
    def failures(self) -> Counter[str]:
        return sum((c.failure_kinds for c in self.run.clients), Counter())

    def figures(self) -> dict[str, float]:
        commit_ms = [1000 * s for c in self.run.clients for s in c.commit_s]
        p50, p99 = (
            (float(v) for v in np.percentile(commit_ms, [50, 99])) if commit_ms else (math.nan, math.nan)
        )
        wall = self.run.wall_s
        ingest = self.committed_bytes / wall / 1e6 if wall > 0 else math.nan
        fput = self.fput_bytes / self.fput_wall_s / 1e6 if self.fput_wall_s > 0 else math.nan
        commits = self.committed / wall if wall > 0 else math.nan
        return {
            "commits/s": commits,
            "commits/s per process": commits / self.replicas,
            "commit p50 ms": p50,
            "commit p99 ms": p99,
            "ingest MB/s": ingest,
            "fput MB/s": fput,
            "ratio": ingest / fput if fput > 0 else math.nan,
            "wall s": wall,
            "replicas cores": self.cpu.cores(self.cpu.replicas_s),
            "store cores": self.cpu.cores(self.cpu.store_s),
            "catalog cores": self.cpu.cores(self.cpu.catalog_s),
            "robots cores": self.cpu.cores(self.cpu.robots_s),
            "other cores": self.cpu.cores(self.cpu.other_s),
        }


def run_phase(
    n: int,
    cfg: Config,
    catalog_url: str,
    store: tuple[str, int],
    root: Path,
    spec: EmbodimentSpec,
    templates: list[tuple[Path, EpisodeManifest]],
    ledger: Ledger,
    budget_s: float,
    say: Callable[[str], None],
) -> Phase:
    endpoint, store_pid = store
    with replicas(n, catalog_url, endpoint, root) as (urls, pids):
        admin = AdminClient(urls[0], ADMIN_TOKEN)
        try:
            if not ledger.manifests:
                admin.register_embodiment(spec)
            start = time.perf_counter()
            warm = make_fleet(admin, root / "robots", f"w{n}", n, 1, spec, templates)
            fleet = make_fleet(
                admin, root / "robots", f"p{n}", cfg.robots, cfg.episodes_per_robot, spec, templates
            )
        finally:
            admin.close()
        say(
            f"{n} replica(s): {fleet.n} robots registered and {fleet.episodes} bundles of "
            f"{fleet.total_bytes / fleet.episodes / 1e3:.0f} KB linked in {time.perf_counter() - start:.1f} s"
            f" (untimed); robots start episodes for at most {budget_s:.0f} s"
        )
        warm_run = run_robots(warm, urls, math.inf)  # each replica's first requests and connections
        ledger.add(warm, warm_run)
        meter = CpuMeter(pids, store_pid, catalog_url)
        try:
            before = meter.sample()
            run = run_robots(fleet, urls, time.monotonic() + budget_s)
            cpu = meter.between(before, meter.sample())
        finally:
            meter.close()
    ledger.add(fleet, run)
    # The fput baseline: the committed episodes' files, one thread per robot, replicas stopped.
    acked = [set(ids) for ids in run.acknowledged]
    committed = Fleet(
        fleet.label,
        fleet.tokens,
        fleet.spools,
        [[m for m in ms if str(m.episode_id) in ids] for ms, ids in zip(fleet.manifests, acked, strict=True)],
    )
    _, fput_bytes, fput_wall = measure_baseline(committed, endpoint, cfg.baseline_repeats)
    return Phase(
        replicas=n,
        robots=fleet.n,
        bundles=fleet.episodes,
        bundle_bytes=fleet.total_bytes / fleet.episodes,
        run=run,
        committed_bytes=committed.total_bytes,
        fput_bytes=fput_bytes,
        fput_wall_s=fput_wall,
        cpu=cpu,
        count=tally(ledger, f"fl-p{n}-", catalog_url, endpoint),
    )


@dataclass
class Report:
    phases: list[Phase]
    final: Count | None
    skipped_counts: list[int]  # replica counts not run: --max-seconds spent
    ledger: Ledger


@contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    """Bundles, spools and every process's log: kept in `keep` when given (to read the logs)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="wamfleet-fleet-load-") as tmp:
        yield Path(tmp)


def run(cfg: Config, say: Callable[[str], None] = print) -> Report:
    """The whole benchmark: templates, then per replica count a fresh set of replicas, robots
    and their episodes on the shared catalog and store, then the final count over all of them."""
    deadline = time.monotonic() + cfg.max_seconds
    spec = embodiment(cfg.size)
    phases: list[Phase] = []
    skipped: list[int] = []
    ledger = Ledger()
    with work_dir(cfg.work) as root, moto_server(root) as store:
        Minio(store[0], ACCESS_KEY, SECRET_KEY, secure=False, region=REGION).make_bucket(PLATFORM_BUCKET)
        start = time.perf_counter()
        templates = record_templates(root, spec, cfg)
        sizes = [m.total_bytes for _, m in templates]
        say(
            f"templates: {len(templates)} bundles of {min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} KB"
            f" recorded in {time.perf_counter() - start:.1f} s (untimed)"
        )
        with fresh_database(cfg.catalog_url, cfg.pg_admin_url) as catalog_url:
            say(HEADER)
            for k, n in enumerate(cfg.replicas):
                left = deadline - time.monotonic()
                if left < 10:
                    say(f"{n} replica(s): not run, --max-seconds {cfg.max_seconds:.0f} spent")
                    skipped.append(n)
                    continue
                # The robots' share of what is left; the rest is for start-up, the fput baseline, the count.
                budget = max(5.0, 0.6 * left / (len(cfg.replicas) - k))
                phase = run_phase(n, cfg, catalog_url, store, root, spec, templates, ledger, budget, say)
                phases.append(phase)
                say(row(phase))
            final = tally(ledger, "", catalog_url, store[0]) if ledger.manifests else None
    return Report(phases, final, skipped, ledger)


# Printing ---------------------------------------------------------------------------------

HEADER = (
    f"{'replicas':>8} {'robots':>6} {'episodes':>8} {'commits/s':>9} {'per process':>11} {'commit p50':>10}"
    f" {'p99':>9} {'MB/s':>6} {'fput':>6} {'ratio':>5} {'errors':>6} {'lost':>4} {'dup':>4}"
)


def row(p: Phase) -> str:
    f = p.figures()
    return (
        f"{p.replicas:>8} {p.robots:>6} {p.committed:>8} {f['commits/s']:>9.1f}"
        f" {f['commits/s per process']:>11.1f}"
        f" {f['commit p50 ms']:>7.0f} ms {f['commit p99 ms']:>6.0f} ms {f['ingest MB/s']:>6.2f}"
        f" {f['fput MB/s']:>6.1f} {f['ratio']:>5.2f} {sum(p.failures.values()):>6} {p.count.lost:>4}"
        f" {p.count.duplicated:>4}"
    )


def knee(phases: list[Phase]) -> int | None:
    """The replica count after which commits/s stops rising by KNEE_GAIN; None: still rising."""
    ordered = sorted(phases, key=lambda p: p.replicas)
    for a, b in itertools.pairwise(ordered):
        if b.figures()["commits/s"] < KNEE_GAIN * a.figures()["commits/s"]:
            return a.replicas
    return None


def saturation(p: Phase) -> str:
    """Which components ran at SATURATED of their CPU capacity during the timed window."""
    f, cpus = p.figures(), os.cpu_count() or 1
    box = f["replicas cores"] + f["store cores"] + f["catalog cores"] + f["robots cores"] + f["other cores"]
    found = []
    if f["store cores"] >= SATURATED:
        found.append(f"the store (moto, one Python process: {f['store cores']:.2f} of 1 core)")
    if f["replicas cores"] / p.replicas >= SATURATED:
        found.append(f"the replicas ({f['replicas cores'] / p.replicas:.2f} of 1 core each)")
    if f["robots cores"] >= SATURATED:
        found.append(f"the robots' process ({f['robots cores']:.2f} of 1 core)")
    if f["catalog cores"] >= SATURATED * cpus:
        found.append(f"PostgreSQL ({f['catalog cores']:.2f} of {cpus} cores)")
    if box >= SATURATED * cpus:
        found.append(
            f"the box ({box:.2f} of {cpus} cores busy, {f['other cores']:.2f} outside this benchmark)"
        )
    return "; ".join(found) if found else "no component CPU-bound (waits: locks, I/O, queueing)"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(rep: Report, total_s: float, say: Callable[[str], None] = print) -> bool:
    """The verdicts and the final count; True when no episode was lost, duplicated or left out."""
    phases = sorted(rep.phases, key=lambda p: p.replicas)
    for p in phases:
        f, cpu, cpus = p.figures(), p.cpu, os.cpu_count() or 1
        say(
            f"{p.replicas} replica(s): {p.bundles} bundles, {p.committed} committed in {f['wall s']:.1f} s,"
            f" {p.run.skipped} skipped (time up), {p.count.never_committed} not committed;"
            f" CPU cores busy: replicas {f['replicas cores']:.2f}, moto {f['store cores']:.2f},"
            f" PostgreSQL {f['catalog cores']:.2f}, robots {f['robots cores']:.2f},"
            f" other {f['other cores']:.2f}"
        )
        if p.committed:
            spent = (cpu.replicas_s, cpu.store_s, cpu.catalog_s, cpu.robots_s)
            ms = [1000 * s / p.committed for s in spent]
            say(
                f"{p.replicas} replica(s): CPU per commit: replicas {ms[0]:.0f} ms, moto {ms[1]:.0f} ms,"
                f" PostgreSQL {ms[2]:.1f} ms, robots {ms[3]:.0f} ms; {sum(ms):.0f} ms in all: this box's"
                f" {cpus} cores hold at most ~{cpus * 1000 / max(sum(ms), 1e-9):.0f} commits/s however many"
                f" replicas, and moto (one Python process) ~{1000 / max(ms[1], 1e-9):.0f}"
            )
        say(f"{p.replicas} replica(s): saturated: {saturation(p)}")
        if p.failures:
            kinds = ", ".join(f"{k} x{v}" for k, v in p.failures.most_common())
            say(f"{p.replicas} replica(s): failed requests (the agent retries each): {kinds}")
    if phases:
        best = max(phases, key=lambda p: p.figures()["commits/s per process"])
        per_process = best.figures()["commits/s per process"]
        say(
            f"today's reference: 4-11 commits/s for one process (benchmarks/ingest.py), taken as"
            f" {TODAY_COMMITS_PER_S:.0f}; target per process >= 10x = {TARGET_PER_PROCESS:.0f} commits/s:"
            f" best {per_process:.1f} at {best.replicas} replica(s)"
            f" ({per_process / TODAY_COMMITS_PER_S:.1f}x):"
            f" {verdict(per_process >= TARGET_PER_PROCESS)}"
        )
        ratios = [(p.replicas, p.figures()["ratio"]) for p in phases]
        say(
            f"target end to end >= {TARGET_RATIO}x a raw fput of the same bytes: "
            + ", ".join(f"{n} replica(s) {r:.2f} {verdict(r >= TARGET_RATIO)}" for n, r in ratios)
        )
        rising = ", ".join(f"{p.replicas}: {p.figures()['commits/s']:.1f}" for p in phases)
        at = knee(phases)
        if len(phases) < 2:
            where = "knee: needs two or more replica counts"
        elif at is None:
            where = (
                f"no knee: commits/s still rising by >= {KNEE_GAIN - 1:.0%}"
                f" at {phases[-1].replicas} replica(s)"
            )
        else:
            at_phase = next(p for p in phases if p.replicas == at)
            where = (
                f"knee at {at} replica(s): more replicas add < {KNEE_GAIN - 1:.0%} commits/s;"
                f" saturated at {at}: {saturation(at_phase)}"
            )
        say(f"commits/s by replicas ({rising}); {where}")
    if rep.skipped_counts:
        say(f"not run (--max-seconds spent): {rep.skipped_counts} replicas")
    c = rep.final
    if c is None:
        say(f"final count: nothing uploaded; total {total_s:.0f} s")
        return False
    say(
        f"final count (all replica counts and warm-ups): {c.uploaded} distinct bundles uploaded,"
        f" {c.acknowledged} acknowledged; catalog {c.catalog_rows} episodes ({c.catalog_distinct} distinct):"
        f" {'equal' if c.catalog_rows == c.catalog_distinct == c.uploaded else 'DIFFERENT'};"
        f" {c.lost} lost ({c.missing} missing, {c.partial} partial in the store), {c.duplicated} duplicated,"
        f" {c.never_committed} never committed, {c.unexpected} unexpected, {c.orphans} orphaned in the store,"
        f" {c.leftovers} staging objects left: {'exactly once' if c.exact else 'NOT exactly once'}"
    )
    say(f"total {total_s:.0f} s")
    return c.exact


def parse(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Config()
    parser.add_argument("--robots", type=int, default=d.robots)
    parser.add_argument("--episodes-per-robot", type=int, default=d.episodes_per_robot)
    parser.add_argument("--replicas", default=",".join(map(str, d.replicas)), help="comma-separated counts")
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per episode (15 fps)")
    parser.add_argument("--size", type=int, default=d.size, help="camera height and width (even)")
    parser.add_argument("--noise", type=int, default=d.noise, help="pixel noise 0-255: more, bigger videos")
    parser.add_argument("--templates", type=int, default=d.templates, help="distinct recordings linked to")
    parser.add_argument(
        "--baseline-repeats", type=int, default=d.baseline_repeats, help="fput passes (median)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=d.max_seconds, help="time bound of the whole run"
    )
    parser.add_argument(
        "--catalog-url", default=None, help="default: a fresh database through --pg-admin-url"
    )
    parser.add_argument("--pg-admin-url", default=d.pg_admin_url)
    parser.add_argument("--work", type=Path, default=None, help="keep bundles and logs here")
    parser.add_argument("--quick", action="store_true", help=f"~1 minute; defaults {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    counts = tuple(int(v) for v in args.replicas.split(",") if v.strip())
    values = [args.robots, args.episodes_per_robot, args.frames, args.templates, args.baseline_repeats]
    if not counts or min(counts) < 1 or min(values) < 1 or args.max_seconds <= 0:
        parser.error("every count must be positive")
    cfg = Config(
        robots=args.robots,
        episodes_per_robot=args.episodes_per_robot,
        replicas=counts,
        frames=args.frames,
        size=args.size,
        noise=args.noise,
        templates=args.templates,
        baseline_repeats=args.baseline_repeats,
        max_seconds=args.max_seconds,
        catalog_url=args.catalog_url,
        pg_admin_url=args.pg_admin_url,
        work=args.work,
    )
    return cfg


def main() -> None:
    cfg = parse()
    started = time.monotonic()

    def say(line: str) -> None:
        print(line, flush=True)

    load = os.getloadavg()
    say(
        f"fleet load: {cfg.robots} robots x {cfg.episodes_per_robot} episodes ({cfg.frames} frames, 2 cameras"
        f" at {cfg.size}px); replicas {list(cfg.replicas)} on one PostgreSQL catalog + one moto S3 process;"
        f" {os.cpu_count()} CPUs, load average {load[0]:.2f} at the start"
    )
    rep = run(cfg, say)
    say(HEADER)
    for p in sorted(rep.phases, key=lambda p: p.replicas):
        say(row(p))
    ok = report(rep, time.monotonic() - started, say)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
