"""Chaos: every episode reaches the catalog exactly once and whole, whatever fails on the way.

The object store (moto's S3 server) sits behind a proxy that answers 503, drops connections and
flips a byte of request bodies, as a bad link would. moto stores whatever body it gets, so the
proxy also does S3's checksum check for it: a body that does not match its x-amz-checksum-sha256
(or its signed x-amz-content-sha256) is refused with S3's 400 (BadDigest) and never stored. The
platform is SIGKILLed and restarted at random times; the robot agent is SIGKILLed at random
points of its work, dozens of times (at least MIN_KILLED, as many trials as a measured agent
start allows). Then the network heals, the platform stays up, and each robot's agent runs to
the end. Every recorded episode must be in the catalog once, byte-identical to what the robot
recorded, and at no time may the catalog have listed an episode whose objects were not all in
the store, and in the end the store's final keys hold exactly the catalog's episodes. The
catalog is PostgreSQL, as in production, whenever a server listens on 127.0.0.1:5432 (always
under CI=true); SQLite otherwise.

Set WAMFLEET_CHAOS_SEED to replay a run's random choices (process timing still varies).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from tests.conftest import WriteEpisode, catalog_on, in_ci, make_s3_store, postgres_listening
from tests.support.faulty_proxy import FaultyProxy
from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.catalog.tables import Episode, UploadSession
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.net import free_port
from wamfleet.platform.storage import ObjectNotFound, S3ObjectStore, StorageError

# The timeout is a guard against hangs: the trials stop at TRIALS_CAP_S however slow the box is.
pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(600)]

CLI = [sys.executable, "-m", "wamfleet.platform.cli.main"]
ROBOTS = ("chaos-1", "chaos-2", "chaos-3")
EPISODES_PER_ROBOT = 4
# The agent's token bucket starts full with max(rate / 4, 64 KiB), so every fresh agent sends
# its first 64 KiB at once; episodes of a few hundred frames (40-80 KB each) and a low cap make
# each robot's spool take several seconds of capped uploading, spread over many killed agents.
FRAMES = (300, 600)
BANDWIDTH_LIMIT = 50_000
TRIALS = 50
# Agents SIGKILLed while they had episodes to upload: what the trials are there for. Once the
# spools are empty a trial's agent finds nothing to do and exits by itself.
MIN_KILLED = 10
MIN_RESTARTS = 3
KILL_AFTER_S = (0.0, 1.0)
RESTART_EVERY_S = (2.0, 6.0)
FAULTS = {"slow_down": 0.15, "drop_request": 0.07, "drop_response": 0.08, "flip_byte": 0.1}
# Half of the response drops cut the status line or headers, half land further on (in bodies).
HEADER_CUT_SHARE = 0.5
ADMIN_TOKEN = "chaos-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Each trial starts a CLI (about 1.75 s on 2 idle cores, several times that on a busy box) next
# to platform restarts, so the time allowed for the trials is scaled to an agent start measured
# before the chaos: TRIALS x (start + mean wait before the kill) x TRIAL_SLACK, within bounds.
TRIAL_SLACK = 2.0
TRIALS_FLOOR_S = 150.0
TRIALS_CAP_S = 240.0  # on a box that busy, fewer trials rather than a longer test
DRAIN_ROUNDS = 6


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The platform, as a process that dies and comes back ----------------------------------------


class Platform:
    """`wamfleet platform serve` on a fixed port; killed with SIGKILL, started again."""

    def __init__(self, env: dict[str, str], port: int, log: IO[bytes]) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.starts = 0

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _start_once(self, timeout_s: float) -> bool:
        cmd = [*CLI, "platform", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. the object store was unreachable at startup: start again
            if self._healthy():
                return True
            time.sleep(0.05)
        self._kill()
        return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def start(self, attempts: int = 5, timeout_s: float = 30.0) -> None:
        with self.lock:
            for _ in range(attempts):
                if self._start_once(timeout_s):
                    return
                self._kill()
            raise RuntimeError(f"the platform did not come up in {attempts} attempts (see its log)")

    def restart(self) -> None:
        with self.lock:
            self._kill()
        self.start()

    def ensure_up(self) -> None:
        with self.lock:
            alive = self.proc is not None and self.proc.poll() is None and self._healthy()
        if not alive:
            self.restart()

    def stop(self) -> None:
        with self.lock:
            self._kill()


class Restarter(threading.Thread):
    """SIGKILLs and restarts the platform at random intervals until stopped."""

    def __init__(self, platform: Platform, rng: random.Random) -> None:
        super().__init__(name="chaos-restarter", daemon=True)
        self.platform = platform
        self.rng = rng
        self.stop_event = threading.Event()
        self.restarts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(*RESTART_EVERY_S)):
                self.platform.restart()  # returns once /healthz answers
                self.restarts += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=120)
        assert not self.is_alive(), "the restarter thread did not stop"


# The observer: what the catalog lists must be whole in the store --------------------------------


@dataclass
class Recorded:
    robot_id: str
    episode_id: str
    pristine: Path  # untouched copy of the bundle as recorded
    manifest: EpisodeManifest

    @property
    def prefix(self) -> str:
        return f"episodes/{self.robot_id}/{self.episode_id}/"


def list_catalog(client: httpx.Client, limit: int = 5, max_pages: int = 100) -> list[dict[str, Any]]:
    """Every episode the catalog lists, following next_cursor (small pages on purpose)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/v1/episodes", params=params)
        response.raise_for_status()
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError(f"the episode listing did not end after {max_pages} pages")


def check_in_store(store: S3ObjectStore, episode: Recorded) -> list[str]:
    """Problems with a listed episode's objects, read straight from moto (no proxy)."""
    problems = []
    try:
        stored = EpisodeManifest.model_validate_json(store.get_bytes(episode.prefix + MANIFEST_FILE))
    except ObjectNotFound:
        return [f"{episode.episode_id}: listed, but {MANIFEST_FILE} is not in the store"]
    except ValueError as exc:
        return [f"{episode.episode_id}: listed, but {MANIFEST_FILE} is not a valid manifest: {exc}"]
    if stored.files != episode.manifest.files:
        problems.append(f"{episode.episode_id}: stored manifest's files differ from the recorded ones")
    for entry in stored.files:
        try:
            size = store.stat(episode.prefix + entry.path).size
        except ObjectNotFound:
            problems.append(f"{episode.episode_id}: listed, but {entry.path} is not in the store")
            continue
        if size != entry.size:
            problems.append(f"{episode.episode_id}: {entry.path} is {size} bytes, manifest says {entry.size}")
    return problems


class Observer(threading.Thread):
    """Polls the catalog whenever the platform answers and checks every listed episode in moto."""

    def __init__(self, url: str, store: S3ObjectStore, recorded: dict[str, Recorded]) -> None:
        super().__init__(name="chaos-observer", daemon=True)
        self.url = url
        self.store = store
        self.recorded = recorded
        self.stop_event = threading.Event()
        self.violations: list[str] = []
        self.seen: set[str] = set()
        self.polls = 0
        self.checks = 0
        self.error: BaseException | None = None

    def _violation(self, message: str) -> None:
        if message not in self.violations:
            self.violations.append(message)

    def poll(self, client: httpx.Client, recheck_all: bool) -> None:
        items = list_catalog(client)
        self.polls += 1
        ids = [item["episode_id"] for item in items]
        if len(ids) != len(set(ids)):
            self._violation(f"the listing holds duplicates: {sorted(i for i in ids if ids.count(i) > 1)}")
        for gone in self.seen - set(ids):
            self._violation(f"{gone}: listed before, missing from a later listing")
        for item in items:
            episode_id = item["episode_id"]
            episode = self.recorded.get(episode_id)
            if episode is None:
                self._violation(f"{episode_id}: listed, but no robot recorded it")
                continue
            if item["robot_id"] != episode.robot_id:
                self._violation(
                    f"{episode_id}: listed under {item['robot_id']}, recorded by {episode.robot_id}"
                )
            if episode_id in self.seen and not recheck_all:
                continue
            for problem in check_in_store(self.store, episode):
                self._violation(problem)
            self.checks += 1
            self.seen.add(episode_id)

    def run(self) -> None:
        rounds = 0
        try:
            with httpx.Client(base_url=self.url, headers=ADMIN, timeout=2.0) as client:
                while not self.stop_event.is_set():
                    try:
                        self.poll(client, recheck_all=rounds % 5 == 0)
                        rounds += 1
                    except httpx.HTTPError:
                        pass  # the platform is down or restarting: poll when it answers again
                    except StorageError as exc:
                        self._violation(f"moto itself failed under the observer: {exc}")
                    self.stop_event.wait(0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the observer thread did not stop"


# The robots' agents ------------------------------------------------------------------------


@dataclass
class Trial:
    robot_id: str
    ready_before: int
    killed_after_s: float
    exited_by_itself: bool
    returncode: int | None


@dataclass
class Fleet:
    root: Path
    url: str
    tokens: dict[str, str]
    log: IO[bytes]
    trials: list[Trial] = field(default_factory=list)

    def spool(self, robot_id: str) -> Spool:
        return Spool(self.root / robot_id)

    def env(self, robot_id: str) -> dict[str, str]:
        return os.environ | {
            "WAMFLEET_AGENT_API_URL": self.url,
            "WAMFLEET_AGENT_ROBOT_ID": robot_id,
            "WAMFLEET_AGENT_TOKEN": self.tokens[robot_id],
            "WAMFLEET_AGENT_SPOOL_DIR": str(self.root / robot_id),
            "WAMFLEET_AGENT_BANDWIDTH_LIMIT": str(BANDWIDTH_LIMIT),
            "WAMFLEET_AGENT_BACKOFF_BASE_S": "0.05",
            "WAMFLEET_AGENT_BACKOFF_MAX_S": "1",
            "WAMFLEET_AGENT_MAX_ATTEMPTS": "6",
            "WAMFLEET_AGENT_TIMEOUT_S": "15",
            "COLUMNS": "200",
        }

    def ready(self, robot_id: str) -> list[str]:
        return sorted(p.name for p in self.spool(robot_id).ready())

    def kill_trial(self, robot_id: str, kill_after_s: float) -> Trial:
        """Starts `agent run --once`, waits for "agent ready", sleeps, then SIGKILLs it."""
        ready_before = len(self.ready(robot_id))
        proc = subprocess.Popen(
            [*CLI, "agent", "run", "--once"],
            env=self.env(robot_id),
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        try:
            wait_for_line(proc, "agent ready", timeout_s=30.0)
            time.sleep(kill_after_s)
            exited = proc.poll() is not None
            if not exited:
                proc.send_signal(signal.SIGKILL)
            returncode = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()
        trial = Trial(robot_id, ready_before, kill_after_s, exited, returncode if exited else None)
        self.trials.append(trial)
        return trial

    def time_start(self, robot_id: str) -> float:
        """Seconds from starting `agent run --once` to its "agent ready" line (the CLI's start)."""
        started = time.monotonic()
        proc = subprocess.Popen(
            [*CLI, "agent", "run", "--once"], env=self.env(robot_id), stdout=subprocess.PIPE, stderr=self.log
        )
        try:
            wait_for_line(proc, "agent ready", timeout_s=60.0)
            return time.monotonic() - started
        finally:
            proc.wait(timeout=60)  # with an empty spool it is done at once
            assert proc.stdout is not None
            proc.stdout.close()

    def run_to_end(self, robot_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "agent", "run", "--once"],
            env=self.env(robot_id),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def wait_for_line(proc: subprocess.Popen[bytes], prefix: str, timeout_s: float) -> None:
    """Reads the process's stdout until a line starts with `prefix`; fails on exit or timeout."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"the agent exited before {prefix!r}: {buffer.decode(errors='replace')}")
            buffer += chunk
            if any(line.startswith(prefix.encode()) for line in buffer.splitlines()):
                return
    raise AssertionError(f"no {prefix!r} line from the agent in {timeout_s}s: {buffer!r}")


def trials_deadline_s(agent_start_s: float) -> float:
    """The time allowed for TRIALS kill trials, given how long one agent takes to start."""
    per_trial = agent_start_s + sum(KILL_AFTER_S) / 2
    return min(max(TRIALS * per_trial * TRIAL_SLACK, TRIALS_FLOOR_S), TRIALS_CAP_S)


# Setting up --------------------------------------------------------------------------------


def register(url: str, embodiment: EmbodimentSpec) -> dict[str, str]:
    tokens = {}
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30.0) as client:
        response = client.post("/v1/embodiments", json=embodiment.model_dump(mode="json"))
        assert response.status_code == 201, response.text
        for robot_id in ROBOTS:
            response = client.post("/v1/robots", json={"robot_id": robot_id, "embodiment": embodiment.name})
            assert response.status_code == 201, response.text
            tokens[robot_id] = response.json()["token"]
    return tokens


def record(
    write_episode: WriteEpisode, fleet: Fleet, pristine_root: Path, rng: random.Random
) -> dict[str, Recorded]:
    recorded = {}
    for robot_id in ROBOTS:
        spool = fleet.spool(robot_id)
        for k in range(EPISODES_PER_ROBOT):
            episode_id = new_episode_id()
            directory, manifest = write_episode(
                rng.randint(*FRAMES),
                robot_id=robot_id,
                task=f"chaos task {k}",
                directory=spool.dir("ready", str(episode_id)),
                episode_id=episode_id,
            )
            assert directory.name == str(manifest.episode_id)
            pristine = pristine_root / str(episode_id)
            shutil.copytree(directory, pristine)
            recorded[str(episode_id)] = Recorded(robot_id, str(episode_id), pristine, manifest)
    return recorded


@contextlib.contextmanager
def running(*stops: Any) -> Iterator[None]:
    """Calls every stop() on the way out, even if one of them fails."""
    try:
        yield
    finally:
        errors = []
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest, report after
                errors.append(exc)
        if errors:
            raise errors[0]


def catalog_rows(url: str) -> tuple[int, dict[str, str]]:
    """The episodes table's row count and every upload session's status, read from the catalog."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.scalar(select(func.count()).select_from(Episode)) or 0
            rows = conn.execute(select(UploadSession.session_id, UploadSession.status))
            statuses = {session_id: status for session_id, status in rows}
    finally:
        engine.dispose()
    return count, statuses


# The test ----------------------------------------------------------------------------------


@pytest.fixture
def chaos_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """PostgreSQL, the production catalog, when a server listens (and under CI=true, where its
    absence fails the test); SQLite otherwise. One catalog, not both: a run takes minutes."""
    kind = "postgresql" if postgres_listening() or in_ci() else "sqlite"
    with catalog_on(kind, request, tmp_path) as url:
        yield url


def test_every_episode_lands_once_and_whole_under_chaos(
    tmp_path: Path,
    moto_endpoint: str,
    chaos_catalog: str,
    embodiment: EmbodimentSpec,
    write_episode: WriteEpisode,
) -> None:
    started = time.monotonic()
    seed = int(os.environ.get("WAMFLEET_CHAOS_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"\nchaos seed {seed} (WAMFLEET_CHAOS_SEED replays it)")
    rng = random.Random(seed)
    bucket = f"chaos-{uuid.uuid4().hex[:12]}"
    data_dir = tmp_path / "platform"
    data_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()

    platform_log = open(logs / "platform.log", "ab")  # noqa: SIM115 - closed on the way out below
    agent_log = open(logs / "agents.log", "ab")  # noqa: SIM115
    proxy = FaultyProxy(
        moto_endpoint,
        seed=rng.randrange(1 << 32),
        header_cut_share=HEADER_CUT_SHARE,
        verify_checksums=True,  # moto does not check bodies against their digests; S3 does
    ).start()
    env = os.environ | {
        "WAMFLEET_STORAGE_BACKEND": "s3",
        "WAMFLEET_S3_ENDPOINT": proxy.endpoint,
        "WAMFLEET_S3_ACCESS_KEY": "chaos-access",
        "WAMFLEET_S3_SECRET_KEY": "chaos-secret",
        "WAMFLEET_S3_REGION": "us-east-1",
        "WAMFLEET_S3_BUCKET": bucket,
        "WAMFLEET_CATALOG_URL": chaos_catalog,
        "WAMFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
        "WAMFLEET_DATA_DIR": str(data_dir),
        "WAMFLEET_API_HOST": "127.0.0.1",
    }
    platform = Platform(env, free_port(), platform_log)
    restarter = Restarter(platform, random.Random(rng.randrange(1 << 32)))
    observer: Observer | None = None

    def stop_observer() -> None:
        if observer is not None and observer.is_alive():
            observer.stop()

    def stop_restarter() -> None:
        if restarter.is_alive():
            restarter.stop()

    def close_logs() -> None:
        platform_log.close()
        agent_log.close()

    with running(close_logs, proxy.stop, platform.stop, stop_restarter, stop_observer):
        # Set up with the network healthy: the bucket, the embodiment, the robots, the episodes.
        platform.start()
        tokens = register(platform.url, embodiment)
        fleet = Fleet(tmp_path / "spools", platform.url, tokens, agent_log)
        # How long an agent takes to start on this box now (its spool is still empty).
        agent_start_s = max(fleet.time_start(ROBOTS[0]) for _ in range(2))
        deadline_s = trials_deadline_s(agent_start_s)
        recorded = record(write_episode, fleet, tmp_path / "pristine", rng)
        moto = make_s3_store(moto_endpoint, bucket, create_bucket=False)
        observer = Observer(platform.url, moto, recorded)
        observer.start()

        # Chaos: a faulty network, a platform that dies, agents killed mid-work.
        proxy.set_faults(**FAULTS)
        restarter.start()
        trials_started = time.monotonic()
        for _ in range(TRIALS):
            if time.monotonic() - trials_started > deadline_s:
                break
            busy = [r for r in ROBOTS if fleet.ready(r)]
            robot_id = rng.choice(busy or list(ROBOTS))
            fleet.kill_trial(robot_id, rng.uniform(*KILL_AFTER_S))
        chaos_s = time.monotonic() - trials_started

        # Heal: no more faults or restarts; each robot's agent runs until its spool is empty.
        proxy.pass_through()
        restarter.stop()
        assert restarter.error is None, f"restarting the platform failed: {restarter.error!r}"
        platform.ensure_up()
        drain_runs = 0
        for _ in range(DRAIN_ROUNDS):
            pending = [r for r in ROBOTS if fleet.ready(r)]
            if not pending:
                break
            for robot_id in pending:
                fleet.run_to_end(robot_id)
                drain_runs += 1
        left = {r: fleet.ready(r) for r in ROBOTS if fleet.ready(r)}
        assert not left, f"spools not empty after {DRAIN_ROUNDS} healthy agent rounds: {left}"

        # One last look by the observer with everything settled, then stop it.
        polls_before, deadline = observer.polls, time.monotonic() + 30
        while observer.polls < polls_before + 2 and time.monotonic() < deadline:
            assert observer.is_alive(), f"the observer died: {observer.error!r}"
            time.sleep(0.1)
        observer.stop()
        assert observer.error is None, f"the observer failed: {observer.error!r}"

        with httpx.Client(base_url=platform.url, headers=ADMIN, timeout=30.0) as client:
            listed = list_catalog(client)
        faults = proxy.counts()
        staging_left = [info.key for info in moto.list("uploads/")]
        published = {info.key.split("/")[2] for info in moto.list("episodes/")}

    trials = fleet.trials
    killed = sum(1 for t in trials if not t.exited_by_itself)
    killed_at_work = sum(1 for t in trials if t.ready_before and not t.exited_by_itself)
    productive = sum(1 for t in trials if t.ready_before)
    count, statuses = catalog_rows(chaos_catalog)
    left_by_status: dict[str, int] = {}
    for key in staging_left:  # uploads/<session>/<file>: what left them there?
        status = statuses.get(key.split("/")[1], "unknown")
        left_by_status[status] = left_by_status.get(status, 0) + 1
    rejected = {
        p.name: (p / "rejected.txt").read_text().strip()
        for r in ROBOTS
        for p in sorted((fleet.root / r / "rejected").iterdir())
    }
    print(
        f"chaos: {len(trials)} agent trials ({killed} SIGKILLed mid-run, {productive} with episodes ready), "
        f"{restarter.restarts} platform restarts (SIGKILL), {len(recorded)} episodes from {len(ROBOTS)} "
        f"robots, {sum(e.manifest.total_bytes for e in recorded.values())} bytes"
    )
    print(
        f"proxy: {faults['slow_down']} x 503, {faults['drop_request']} request drops, "
        f"{faults['drop_response']} response drops, {faults['flip_byte']} flipped bytes "
        f"({faults['refused_checksum']} refused as BadDigest), {faults['connections']} connections"
    )
    print(
        f"observer: {observer.polls} listings, {observer.checks} store checks, "
        f"{len(observer.violations)} violations; healing took {drain_runs} agent runs; "
        f"{len(rejected)} episodes refused; {len(staging_left)} staging objects left {left_by_status}"
    )
    print(
        f"time: an agent starts in {agent_start_s:.2f}s, trials allowed {deadline_s:.0f}s, "
        f"chaos phase {chaos_s:.1f}s, whole test {time.monotonic() - started:.1f}s; "
        f"catalog {chaos_catalog.split(':', 1)[0]}"
    )

    # The robots agree with the catalog: nothing was refused.
    assert not rejected, f"episodes the platform refused (robots set them aside for good): {rejected}"

    # The catalog: exactly the recorded episodes, each once.
    ids = [item["episode_id"] for item in listed]
    assert len(ids) == len(set(ids)), f"the catalog lists duplicates: {ids}"
    assert set(ids) == set(recorded), (
        f"missing from the catalog: {sorted(set(recorded) - set(ids))}; "
        f"never recorded: {sorted(set(ids) - set(recorded))}"
    )
    assert count == len(recorded), f"the episodes table holds {count} rows, {len(recorded)} were recorded"
    # The final keys hold exactly the catalog's episodes: nothing half-committed was left there.
    assert published == set(ids), f"in the store but not the catalog: {sorted(published - set(ids))}"

    # Byte-identical: every object in the store hashes like the robot's original.
    for episode in recorded.values():
        stored_manifest = moto.get_bytes(episode.prefix + MANIFEST_FILE)
        assert stored_manifest == (episode.pristine / MANIFEST_FILE).read_bytes(), (
            f"{episode.episode_id}: stored manifest.json differs from the recorded one"
        )
        for entry in episode.manifest.files:
            original = (episode.pristine / entry.path).read_bytes()
            assert sha256_bytes(original) == entry.sha256
            stored = moto.get_bytes(episode.prefix + entry.path)
            assert sha256_bytes(stored) == sha256_bytes(original), (
                f"{episode.episode_id}/{entry.path}: stored bytes differ from the recorded file"
            )

    # Nothing partial was ever visible, and the chaos really happened.
    assert not observer.violations, "partial or inconsistent episodes were visible:\n" + "\n".join(
        observer.violations
    )
    assert killed_at_work >= MIN_KILLED, (
        f"only {killed_at_work} agents were SIGKILLed with episodes to upload ({len(trials)} trials in "
        f"{chaos_s:.0f}s, {deadline_s:.0f}s allowed for an agent start of {agent_start_s:.2f}s)"
    )
    assert restarter.restarts >= MIN_RESTARTS, f"the platform was restarted only {restarter.restarts} times"
    assert faults["slow_down"] > 0, f"the proxy never answered 503: {faults}"
    assert faults["drop_request"] + faults["drop_response"] > 0, f"the proxy never dropped: {faults}"
    assert faults["flip_byte"] > 0, f"the proxy never flipped a byte: {faults}"
    # Clients send the digests of what they send: only a flipped body may fail the check.
    assert faults["refused_checksum"] <= faults["flip_byte"], (
        f"bodies refused that were not flipped: {faults}"
    )
