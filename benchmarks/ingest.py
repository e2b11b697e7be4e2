"""Ingest through the platform API on the S3 store: commits/s, commit latency, upload rate.

For each N in --uploaders, N simulated robots (a thread, a Spool and an Uploader each) upload
pre-generated episode bundles concurrently: open an upload session, PUT every file to its
presigned URL, commit. Printed per N: episodes committed per second (wall clock over the whole
concurrent run), p50 and p99 latency of the commit call, and the headline ratio: end to end,
bytes committed over the wall time of the whole ingest (sessions, PUTs and commits), against a
raw `Minio.fput_object` of the same files with the same number of threads (bytes over its own
wall time), measured in the same run against the same S3 server (median of --baseline-repeats
passes). The PUT-only ratio (bytes / seconds inside the PUT calls) follows on a second line:
it leaves the commit out, so it says how fast the PUTs are, not how fast episodes arrive.

moto's S3 server, the platform API (uvicorn) and the robots all run in this one process and
bind 127.0.0.1 only; bundles are written, and one warm-up episode uploaded, before timing.

    python benchmarks/ingest.py [--uploaders 1,4,8] [--episodes-per-uploader 6]
                                [--frames 150] [--size 224] [--noise 64]
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import urllib3
from minio import Minio
from pydantic import SecretStr

from wamfleet.fleet_agent.client import PlatformClient, TokenBucket
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.spool import Spool
from wamfleet.fleet_agent.uploader import Uploader, UploadReport
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.cli.admin_client import AdminClient
from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec, Outcome
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.contracts.ingest import EpisodeSummary
from wamfleet.platform.settings import Settings

TARGET_RATIO = 0.8
ADMIN_TOKEN = "bench-admin-token"
ACCESS_KEY, SECRET_KEY, REGION = "bench-access", "bench-secret", "us-east-1"
PLATFORM_BUCKET, BASELINE_BUCKET = "wamfleet-bench", "wamfleet-bench-baseline"
CAMERAS = ("exterior", "wrist")
Images = dict[str, np.ndarray]


def embodiment(size: int) -> EmbodimentSpec:
    return EmbodimentSpec(
        name="bench-arm",
        cameras=[CameraSpec(name=c, height=size, width=size) for c in CAMERAS],
        fps=15,
        state_names=[f"joint{i}" for i in range(7)],
        action_names=[f"action{i}" for i in range(4)],
    )


def frame_pool(spec: EmbodimentSpec, count: int, noise: int, seed: int = 0) -> list[Images]:
    """Smooth moving patterns plus uniform noise; the noise sets how many bytes H.264 needs."""
    rng = np.random.default_rng(seed)
    half = noise // 2
    pool = []
    for index in range(count):
        images = {}
        for k, cam in enumerate(spec.cameras):
            yy, xx = np.mgrid[0 : cam.height, 0 : cam.width]
            phase = index * 0.3 + k
            base = 128 + 90 * np.sin(xx / 7.0 + phase) * np.cos(yy / 9.0 - phase / 2)
            img = np.stack([base, 255 - base, np.full_like(base, 60.0)], axis=-1)
            img += rng.integers(-half, half + 1, img.shape)
            images[cam.name] = np.clip(img, 0, 255).round().astype(np.uint8)
        pool.append(images)
    return pool


def write_bundle(
    spool: Spool, robot_id: str, spec: EmbodimentSpec, pool: list[Images], frames: int, offset: int
) -> EpisodeManifest:
    """One finished episode straight into the spool's ready/ (as Spool.finish leaves it)."""
    episode_id = new_episode_id()
    writer = EpisodeWriter(
        spool.dir("ready", str(episode_id)),
        robot_id=robot_id,
        embodiment=spec,
        task="push the block to the goal",
        episode_id=episode_id,
    )
    state = np.zeros(spec.state_dim, np.float32)
    action = np.zeros(spec.action_dim, np.float32)
    for i in range(frames):
        state[:] = i * 0.01
        action[:] = np.sin(i * 0.1)
        image = pool[(offset + i) % len(pool)]
        writer.add_frame(image, state, action, reward=0.0, success=i == frames - 1)
    return writer.close(Outcome(success=True, progress=1.0))


class TimedClient(PlatformClient):
    """The robot's client, timing presigned PUTs and commit calls (production code untouched)."""

    def __init__(self, api_url: str, token: str, timeout_s: float = 60.0) -> None:
        super().__init__(api_url, token, timeout_s)
        self.put_s = 0.0
        self.put_bytes = 0
        self.commit_s: list[float] = []
        self.failures = 0
        self.failure_kinds: Counter[str] = Counter()  # "commit: HTTP 503", "put: ReadTimeout", ...

    def _failed(self, call: str, exc: Exception) -> None:
        self.failures += 1
        found = re.search(r"HTTP \d{3}|[A-Z][A-Za-z]*(?:Error|Timeout|Exception)", str(exc))
        self.failure_kinds[f"{call}: {found.group(0) if found else type(exc).__name__}"] += 1

    def put_file(
        self,
        url: str,
        path: Path,
        size: int,
        throttle: TokenBucket | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        start = time.perf_counter()
        try:
            super().put_file(url, path, size, throttle, headers)
        except Exception as exc:
            self._failed("put", exc)
            raise
        finally:
            self.put_s += time.perf_counter() - start
        self.put_bytes += size

    def commit(self, session_id: str) -> EpisodeSummary:
        start = time.perf_counter()
        try:
            summary = super().commit(session_id)
        except Exception as exc:
            self._failed("commit", exc)
            raise
        self.commit_s.append(time.perf_counter() - start)
        return summary


@dataclass
class Fleet:
    """The robots of one run: their tokens, spools and bundles."""

    label: str
    tokens: list[str] = field(default_factory=list)
    spools: list[Spool] = field(default_factory=list)
    manifests: list[list[EpisodeManifest]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def episodes(self) -> int:
        return sum(len(m) for m in self.manifests)

    @property
    def total_bytes(self) -> int:
        return sum(m.total_bytes for ms in self.manifests for m in ms)


@dataclass
class Result:
    n: int
    checksums: str  # Settings.store_checksums of this run
    episodes: int
    wall_s: float
    commit_s: list[float]
    agent_bytes: int
    agent_rate: float  # bytes/s inside the PUT calls, summed over uploaders
    baseline_bytes: int  # one pass
    baseline_rate: float  # bytes/s inside fput_object, summed over threads (median pass)
    baseline_wall_s: float  # median pass
    failures: int
    committed_ids: list[str]
    failure_kinds: Counter[str] = field(default_factory=Counter)


def run_threads(n: int, work: Callable[[int], None]) -> float:
    """Runs work(0..n-1) on n threads released together; returns the wall time until all end."""
    barrier = threading.Barrier(n + 1)
    errors: list[Exception] = []

    def target(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except Exception as exc:  # noqa: BLE001 (re-raised on the main thread below)
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,), name=f"bench-{i}") for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall


def run_agents(fleet: Fleet, api_url: str | list[str]) -> tuple[float, list[TimedClient], list[UploadReport]]:
    """Every robot's uploader once, concurrently; with several API URLs (replicas), robot i talks
    to URL i mod n, as behind a load balancer that keeps a robot's connection."""
    urls = [api_url] if isinstance(api_url, str) else api_url
    clients = [TimedClient(urls[i % len(urls)], token) for i, token in enumerate(fleet.tokens)]
    reports = [UploadReport() for _ in range(fleet.n)]
    # A long retention keeps the uploaded bundles on disk for the fput baseline.
    uploaders = [
        Uploader(spool, client, retention_s=3600.0, backoff_base_s=0.05, backoff_max_s=1.0)
        for spool, client in zip(fleet.spools, clients, strict=True)
    ]

    def work(i: int) -> None:
        reports[i] = uploaders[i].run_once()

    try:
        wall = run_threads(fleet.n, work)
    finally:
        for client in clients:
            client.close()
    problems = [(r.rejected, r.deferred) for r in reports if r.rejected or r.deferred]
    if problems:
        raise RuntimeError(f"{fleet.label}: episodes not committed (rejected, deferred): {problems}")
    return wall, clients, reports


def run_baseline(fleet: Fleet, client: Minio) -> tuple[float, int, float]:
    """One pass of the same files, one thread per uploader, each `fput_object` into another bucket.

    Returns (bytes/s inside fput_object summed over threads, bytes, wall seconds).
    """
    seconds = [0.0] * fleet.n
    sent = [0] * fleet.n

    def work(i: int) -> None:
        for manifest in fleet.manifests[i]:
            directory = fleet.spools[i].dir("uploaded", str(manifest.episode_id))
            for entry in manifest.files:
                key = f"{fleet.label}/{manifest.prefix}{entry.path}"
                start = time.perf_counter()
                client.fput_object(BASELINE_BUCKET, key, str(directory / entry.path))
                seconds[i] += time.perf_counter() - start
                sent[i] += entry.size

    wall = run_threads(fleet.n, work)
    rate = sum(b / s for b, s in zip(sent, seconds, strict=True) if s > 0)
    return rate, sum(sent), wall


def measure_baseline(fleet: Fleet, endpoint: str, repeats: int) -> tuple[float, int, float]:
    """The median of `repeats` fput passes over the fleet's uploaded files (run_baseline's tuple)."""
    http = urllib3.PoolManager(
        maxsize=max(10, fleet.n), timeout=urllib3.Timeout(connect=10.0, read=60.0), retries=False
    )
    s3 = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION, http_client=http)
    try:
        if not s3.bucket_exists(BASELINE_BUCKET):
            s3.make_bucket(BASELINE_BUCKET)
        passes = sorted(run_baseline(fleet, s3) for _ in range(repeats))
    finally:
        http.clear()
    return passes[len(passes) // 2]


def measure(
    fleet: Fleet, api_url: str | list[str], endpoint: str, repeats: int, checksums: str = "trust"
) -> Result:
    wall, clients, reports = run_agents(fleet, api_url)
    baseline_rate, baseline_bytes, baseline_wall = measure_baseline(fleet, endpoint, repeats)
    return Result(
        n=fleet.n,
        checksums=checksums,
        episodes=sum(len(r.committed) for r in reports),
        wall_s=wall,
        commit_s=[s for c in clients for s in c.commit_s],
        agent_bytes=sum(c.put_bytes for c in clients),
        agent_rate=sum(c.put_bytes / c.put_s for c in clients if c.put_s > 0),
        baseline_bytes=baseline_bytes,
        baseline_rate=baseline_rate,
        baseline_wall_s=baseline_wall,
        failures=sum(c.failures for c in clients),
        failure_kinds=sum((c.failure_kinds for c in clients), Counter()),
        committed_ids=[name for r in reports for name in r.committed],
    )


def prepare(
    admin: AdminClient,
    root: Path,
    label: str,
    n: int,
    per_uploader: int,
    spec: EmbodimentSpec,
    pool: list[Images],
    frames: int,
) -> Fleet:
    """Registers n robots and writes per_uploader bundles into each one's spool."""
    fleet = Fleet(label)
    for i in range(n):
        robot_id = f"bench-{label}-r{i}"
        fleet.tokens.append(admin.robot_token(robot_id, spec.name))
        spool = Spool(root / label / robot_id)
        fleet.spools.append(spool)
        offsets = [(i * 31 + j * 7) % len(pool) for j in range(per_uploader)]
        fleet.manifests.append([write_bundle(spool, robot_id, spec, pool, frames, o) for o in offsets])
    return fleet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploaders", default="1,4,8", help="comma-separated concurrent uploader counts")
    parser.add_argument("--episodes-per-uploader", type=int, default=6)
    parser.add_argument("--frames", type=int, default=150, help="frames per episode (15 fps)")
    parser.add_argument("--size", type=int, default=224, help="camera height and width (even)")
    parser.add_argument("--noise", type=int, default=64, help="pixel noise 0-255: more noise, bigger videos")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="fput passes per N (median)")
    parser.add_argument(
        "--store-checksums",
        default="trust,read-back",
        help="commit verification modes to run side by side per N (Settings.store_checksums)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.store_checksums.split(",") if m.strip()]
    if not modes or set(modes) - {"trust", "read-back"}:
        parser.error("--store-checksums: a comma-separated list of trust, read-back")
    counts = [int(v) for v in args.uploaders.split(",") if v.strip()]
    if (
        not counts
        or min(counts) < 1
        or min(args.episodes_per_uploader, args.frames, args.baseline_repeats) < 1
    ):
        parser.error("--uploaders, --episodes-per-uploader, --frames and --baseline-repeats must be positive")

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    started = time.perf_counter()
    spec = embodiment(args.size)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"{host}:{port}"
        with tempfile.TemporaryDirectory(prefix="wamfleet-bench-ingest-") as tmp:
            data_dir = Path(tmp) / "platform"
            settings = Settings(
                data_dir=data_dir,
                storage_backend="s3",
                s3_endpoint=endpoint,
                s3_access_key=ACCESS_KEY,
                s3_secret_key=SecretStr(SECRET_KEY),
                s3_region=REGION,
                s3_bucket=PLATFORM_BUCKET,
                catalog_url=f"sqlite:///{data_dir / 'catalog.db'}",
                admin_token=SecretStr(ADMIN_TOKEN),
            )
            app = create_app(settings)
            with serve_in_thread(app) as api_url:
                admin = AdminClient(api_url, ADMIN_TOKEN)
                try:
                    admin.register_embodiment(spec)
                    gen_start = time.perf_counter()
                    pool = frame_pool(spec, 2 * args.frames, args.noise)
                    robots = Path(tmp) / "robots"
                    warmup = prepare(admin, robots, "warmup", 1, 2, spec, pool, args.frames)
                    runs = [(n, mode) for n in counts for mode in modes]  # alternated per N
                    fleets = [
                        prepare(
                            admin,
                            robots,
                            f"n{n}-{mode}",
                            n,
                            args.episodes_per_uploader,
                            spec,
                            pool,
                            args.frames,
                        )
                        for n, mode in runs
                    ]
                    gen_s = time.perf_counter() - gen_start
                    measure(warmup, api_url, endpoint, 1)  # first requests, connections, SQL caches
                    ingest = app.state.platform.ingest
                    results = []
                    for fleet, (_, mode) in zip(fleets, runs, strict=True):
                        ingest.trust_store_checksums = mode == "trust"
                        results.append(measure(fleet, api_url, endpoint, args.baseline_repeats, mode))
                    catalog = admin.all_episodes()
                finally:
                    admin.close()
        report(args, spec, warmup, fleets, results, catalog, gen_s, time.perf_counter() - started)
    finally:
        moto.stop()


def mb(rate: float) -> str:
    return f"{rate / 1e6:.1f}"


def report(
    args: argparse.Namespace,
    spec: EmbodimentSpec,
    warmup: Fleet,
    fleets: list[Fleet],
    results: list[Result],
    catalog: list[EpisodeSummary],
    gen_s: float,
    total_s: float,
) -> None:
    episodes = sum(f.episodes for f in fleets)
    bundle_bytes = sum(f.total_bytes for f in fleets)
    size = f"{args.size}x{args.size}"
    print(
        f"ingest: platform API + S3 store (moto), one process on 127.0.0.1; {len(spec.cameras)} cameras "
        f"at {size}, {args.frames} frames, {bundle_bytes / episodes / 1e3:.0f} KB per episode "
        f"({len(spec.cameras) + 1} files), {args.episodes_per_uploader} episodes per uploader"
    )
    print(f"setup: {episodes + warmup.episodes} bundles written in {gen_s:.1f} s, before timing")
    print(
        f"{'uploaders':>9} {'checksums':>9} {'episodes':>8} {'commits/s':>9} {'commit p50':>10} "
        f"{'commit p99':>10} {'ingest':>10} {'fput':>10} {'ratio':>6}  end to end, target >= {TARGET_RATIO}"
    )
    for r in results:
        p50, p99 = np.percentile(np.asarray(r.commit_s) * 1000, [50, 99])
        ingest, fput = r.agent_bytes / r.wall_s, r.baseline_bytes / r.baseline_wall_s
        ratio = ingest / fput
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(
            f"{r.n:>9} {r.checksums:>9} {r.episodes:>8} {r.episodes / r.wall_s:>9.2f} {p50:>7.1f} ms "
            f"{p99:>7.1f} ms {mb(ingest):>5} MB/s {mb(fput):>5} MB/s {ratio:>6.3f}  {verdict}"
        )
    by_run = {(r.n, r.checksums): r for r in results}
    for n in sorted({r.n for r in results}):
        fast, slow = by_run.get((n, "trust")), by_run.get((n, "read-back"))
        if fast and slow:
            gain = (fast.episodes / fast.wall_s) / (slow.episodes / slow.wall_s)
            print(f"N={n}: commits/s with the store's checksum against reading back: {gain:.2f}x")
    print(
        "ingest: bytes committed / wall time of the whole concurrent ingest (upload sessions, PUTs, "
        f"commits); fput: the same bytes / its wall time, median of {args.baseline_repeats} passes"
    )
    for r in results:
        put_ratio = r.agent_rate / r.baseline_rate
        print(
            f"N={r.n} {r.checksums}: PUTs alone {mb(r.agent_rate)} MB/s "
            f"against fput {mb(r.baseline_rate)} MB/s "
            f"(bytes / seconds inside the PUT calls, summed over threads): {put_ratio:.3f} "
            f"(the commit left out); ingest {r.wall_s:.2f} s wall, fput {r.baseline_wall_s:.2f} s; "
            f"{r.failures} failed requests"
        )
    agent_bytes = sum(r.agent_bytes for r in results)
    baseline_bytes = sum(r.baseline_bytes for r in results)
    timed_ids = {i for r in results for i in r.committed_ids}
    timed = [e for e in catalog if str(e.episode_id) in timed_ids]
    catalog_bytes = sum(e.total_bytes for e in timed)
    expected = episodes + warmup.episodes
    complete = len(timed_ids) == len(timed) == episodes and len(catalog) == expected
    consistent = agent_bytes == baseline_bytes == bundle_bytes == catalog_bytes
    print(
        f"total bytes (timed runs): agents PUT {agent_bytes}, fput per pass {baseline_bytes}, "
        f"bundles {bundle_bytes}, catalog {catalog_bytes}"
    )
    status = "all committed" if complete and consistent else "MISMATCH"
    print(
        f"catalog: {len(catalog)} episodes, expected {expected} ({episodes} timed + "
        f"{warmup.episodes} warm-up): {status}; total {total_s:.1f} s"
    )


if __name__ == "__main__":
    main()
