"""The chaos harness, shared by tests/e2e/test_chaos.py and benchmarks/soak.py.

Both run the same faults (a platform process SIGKILLed and restarted, robot agents SIGKILLed at
random points, moto's S3 behind the fault-injecting proxy) and judge the outcome the same way: the
test asserts on a short run, the soak counts over a long one. Keeping one copy means a fault or a
check added here is exercised by both, and the soak's zeros mean what the test's pass means.
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from sqlalchemy import create_engine, select

from tests.conftest import frame_images
from tests.support.embodiments import small_arm
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.catalog.tables import Episode, UploadSession
from wamfleet.platform.contracts import EmbodimentSpec, Outcome
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest
from wamfleet.platform.contracts.ids import new_episode_id
from wamfleet.platform.entrypoint import WAMFLEET_CLI
from wamfleet.platform.storage import ObjectNotFound, S3ObjectStore, StorageError

ADMIN_TOKEN = "chaos-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The agent's token bucket starts full with max(rate / 4, 64 KiB), so every fresh agent sends
# its first 64 KiB at once; episodes of a few hundred frames (40-80 KB each) and a low cap make
# each robot's spool take several seconds of capped uploading, spread over many killed agents.
FRAMES = (300, 600)
BANDWIDTH_LIMIT = 50_000
KILL_AFTER_S = (0.0, 1.0)
RESTART_EVERY_S = (2.0, 6.0)
FAULTS = {"slow_down": 0.15, "drop_request": 0.07, "drop_response": 0.08, "flip_byte": 0.1}
# Half of the response drops cut the status line or headers, half land further on (in bodies).
HEADER_CUT_SHARE = 0.5
DRAIN_ROUNDS = 6


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embodiment() -> EmbodimentSpec:
    """The robots' embodiment: two small cameras, so episodes are tens of KB."""
    return small_arm("chaos-arm")


def platform_env(*, s3_endpoint: str, bucket: str, catalog_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of `wamfleet platform serve` on the S3 store behind the proxy."""
    return os.environ | {
        "WAMFLEET_STORAGE_BACKEND": "s3",
        "WAMFLEET_S3_ENDPOINT": s3_endpoint,
        "WAMFLEET_S3_ACCESS_KEY": "chaos-access",
        "WAMFLEET_S3_SECRET_KEY": "chaos-secret",
        "WAMFLEET_S3_REGION": "us-east-1",
        "WAMFLEET_S3_BUCKET": bucket,
        "WAMFLEET_CATALOG_URL": catalog_url,
        "WAMFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
        "WAMFLEET_DATA_DIR": str(data_dir),
        "WAMFLEET_API_HOST": "127.0.0.1",
    }


# The platform, as a process that dies and comes back ----------------------------------------


class Platform:
    """`wamfleet platform serve` on a fixed port; killed with SIGKILL, started again.

    A start can fail under a faulty network (the store unreachable at startup); it is tried
    `start_attempts` times before giving up.
    """

    def __init__(self, env: dict[str, str], port: int, log: IO[bytes], start_attempts: int = 5) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.start_attempts = start_attempts
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.starts = 0
        self.failed_starts = 0
        self.down_s = 0.0  # from each restart's SIGKILL until /healthz answered again

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _start_once(self, timeout_s: float) -> bool:
        cmd = [*WAMFLEET_CLI, "platform", "serve", "--port", str(self.port)]
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

    def start(self, timeout_s: float = 30.0) -> None:
        with self.lock:
            for _ in range(self.start_attempts):
                if self._start_once(timeout_s):
                    return
                self.failed_starts += 1
                self._kill()
            raise RuntimeError(
                f"the platform did not come up in {self.start_attempts} attempts (see its log)"
            )

    def restart(self) -> None:
        down_from = time.monotonic()
        with self.lock:
            self._kill()
        self.start()
        self.down_s += time.monotonic() - down_from

    def ensure_up(self) -> None:
        with self.lock:
            alive = self.proc is not None and self.proc.poll() is None and self._healthy()
        if not alive:
            self.restart()

    def stop(self) -> None:
        with self.lock:
            self._kill()


class StoppableThread(threading.Thread):
    """A daemon thread that runs until stop(). stop() waits for it, and does nothing before it
    started or once it ended, so a harness's `running()` may call it whatever happened before."""

    join_timeout_s = 60.0

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def stop(self) -> None:
        if not self.is_alive():
            return
        self.stop_event.set()
        self.join(timeout=self.join_timeout_s)
        assert not self.is_alive(), f"the {self.name} thread did not stop"


class Restarter(StoppableThread):
    """SIGKILLs and restarts the platform at random intervals until stopped."""

    join_timeout_s = 120.0  # a restart in progress finishes first

    def __init__(
        self, platform: Platform, rng: random.Random, every_s: tuple[float, float] = RESTART_EVERY_S
    ) -> None:
        super().__init__("chaos-restarter")
        self.platform = platform
        self.rng = rng
        self.every_s = every_s
        self.restarts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(*self.every_s)):
                self.platform.restart()  # returns once /healthz answers
                self.restarts += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the caller, not lost in a thread
            self.error = exc


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
    """Every episode the catalog lists, following next_cursor (small pages by default, on purpose)."""
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


class Observer(StoppableThread):
    """Polls the catalog whenever the platform answers and checks every listed episode in moto.

    A newly listed episode is checked at once; every `recheck_every`-th poll checks them all again.
    `recorded` may grow while it runs (episodes are added before any agent can upload them).
    """

    def __init__(
        self,
        url: str,
        store: S3ObjectStore,
        recorded: dict[str, Recorded],
        *,
        page_size: int = 5,
        max_pages: int = 100,
        poll_s: float = 0.2,
        recheck_every: int = 5,
    ) -> None:
        super().__init__("chaos-observer")
        self.url = url
        self.store = store
        self.recorded = recorded
        self.page_size = page_size
        self.max_pages = max_pages
        self.poll_s = poll_s
        self.recheck_every = recheck_every
        self.violations: list[str] = []
        self.seen: set[str] = set()
        self.polls = 0
        self.checks = 0
        self.error: BaseException | None = None

    def _violation(self, message: str) -> None:
        if message not in self.violations:
            self.violations.append(message)

    def poll(self, client: httpx.Client, recheck_all: bool) -> None:
        items = list_catalog(client, self.page_size, self.max_pages)
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
                        self.poll(client, recheck_all=rounds % self.recheck_every == 0)
                        rounds += 1
                    except httpx.HTTPError:
                        pass  # the platform is down or restarting: poll when it answers again
                    except StorageError as exc:
                        self._violation(f"moto itself failed under the observer: {exc}")
                    self.stop_event.wait(self.poll_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def settle(self, polls: int = 2, timeout_s: float = 30.0) -> None:
        """Waits for `polls` more listings (everything settled), then stops the observer."""
        polls_before, deadline = self.polls, time.monotonic() + timeout_s
        while self.polls < polls_before + polls and time.monotonic() < deadline:
            assert self.is_alive(), f"the observer died: {self.error!r}"
            time.sleep(0.1)
        self.stop()
        assert self.error is None, f"the observer failed: {self.error!r}"


# The robots' agents ------------------------------------------------------------------------


@dataclass
class Trial:
    robot_id: str
    ready_before: int
    killed_after_s: float | None  # None: left to run to its end
    exited_by_itself: bool
    returncode: int | None
    timed_out: bool = False  # left to run to its end, but it did not end in time (then killed)


@dataclass
class Fleet:
    root: Path
    url: str
    tokens: dict[str, str]
    log: IO[bytes]
    bandwidth_limit: int = BANDWIDTH_LIMIT
    trials: list[Trial] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def robots(self) -> list[str]:
        return list(self.tokens)

    def spool(self, robot_id: str) -> Spool:
        return Spool(self.root / robot_id)

    def env(self, robot_id: str) -> dict[str, str]:
        return os.environ | {
            "WAMFLEET_AGENT_API_URL": self.url,
            "WAMFLEET_AGENT_ROBOT_ID": robot_id,
            "WAMFLEET_AGENT_TOKEN": self.tokens[robot_id],
            "WAMFLEET_AGENT_SPOOL_DIR": str(self.root / robot_id),
            "WAMFLEET_AGENT_BANDWIDTH_LIMIT": str(self.bandwidth_limit),
            "WAMFLEET_AGENT_BACKOFF_BASE_S": "0.05",
            "WAMFLEET_AGENT_BACKOFF_MAX_S": "1",
            "WAMFLEET_AGENT_MAX_ATTEMPTS": "6",
            "WAMFLEET_AGENT_TIMEOUT_S": "15",
            "COLUMNS": "200",
        }

    def ready(self, robot_id: str) -> list[str]:
        return sorted(p.name for p in self.spool(robot_id).ready())

    def rejected(self) -> dict[str, str]:
        """Episodes the robots set aside for good, with the reason each was given."""
        return {
            p.name: (p / "rejected.txt").read_text().strip()
            for r in self.robots
            for p in sorted((self.root / r / "rejected").iterdir())
        }

    def kill_trial(self, robot_id: str, kill_after_s: float | None, end_timeout_s: float = 120.0) -> Trial:
        """Starts `agent run --once`, waits for "agent ready", sleeps, then SIGKILLs it; with
        `kill_after_s=None` it waits up to `end_timeout_s` for the agent to end by itself."""
        ready_before = len(self.ready(robot_id))
        proc = subprocess.Popen(
            [*WAMFLEET_CLI, "agent", "run", "--once"],
            env=self.env(robot_id),
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        timed_out = False
        try:
            wait_for_line(proc, "agent ready", timeout_s=30.0)
            if kill_after_s is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=end_timeout_s)
                timed_out = proc.poll() is None
            else:
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
        trial = Trial(robot_id, ready_before, kill_after_s, exited, returncode if exited else None, timed_out)
        with self.lock:
            self.trials.append(trial)
        return trial

    def time_start(self, robot_id: str) -> float:
        """Seconds from starting `agent run --once` to its "agent ready" line (the CLI's start)."""
        started = time.monotonic()
        proc = subprocess.Popen(
            [*WAMFLEET_CLI, "agent", "run", "--once"],
            env=self.env(robot_id),
            stdout=subprocess.PIPE,
            stderr=self.log,
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
            [*WAMFLEET_CLI, "agent", "run", "--once"],
            env=self.env(robot_id),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def drain(self, rounds: int = DRAIN_ROUNDS) -> int:
        """Runs each robot's agent to its end until every spool is empty (at most `rounds` times
        round the fleet); returns how many agent runs that took."""
        runs = 0
        for _ in range(rounds):
            pending = [r for r in self.robots if self.ready(r)]
            if not pending:
                break
            for robot_id in pending:
                self.run_to_end(robot_id)
                runs += 1
        return runs


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


# Setting up --------------------------------------------------------------------------------


def register(url: str, spec: EmbodimentSpec, robots: list[str]) -> dict[str, str]:
    """Registers the embodiment and the robots; returns each robot's token."""
    tokens = {}
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30.0) as client:
        response = client.post("/v1/embodiments", json=spec.model_dump(mode="json"))
        assert response.status_code == 201, response.text
        for robot_id in robots:
            response = client.post("/v1/robots", json={"robot_id": robot_id, "embodiment": spec.name})
            assert response.status_code == 201, response.text
            tokens[robot_id] = response.json()["token"]
    return tokens


def record_one(
    fleet: Fleet, robot_id: str, spec: EmbodimentSpec, pristine_root: Path, frames: int, task: str
) -> Recorded:
    """Records an episode the way a robot does (into recording/, then renamed into ready/), after
    keeping an untouched copy of it, so an agent never sees it half-written."""
    spool = fleet.spool(robot_id)
    episode_id = new_episode_id()
    directory = spool.dir("recording", str(episode_id))
    with EpisodeWriter(
        directory, robot_id=robot_id, embodiment=spec, task=task, episode_id=episode_id
    ) as writer:
        for i in range(frames):
            state = np.arange(spec.state_dim, dtype=np.float32) + i * 0.5
            action = np.linspace(-1, 1, spec.action_dim, dtype=np.float32) * (i + 1)
            writer.add_frame(frame_images(spec, i), state, action, reward=float(i), success=i == frames - 1)
        manifest = writer.close(Outcome(success=True, progress=1.0))
    assert directory.name == str(manifest.episode_id)
    pristine = pristine_root / str(episode_id)
    shutil.copytree(directory, pristine)
    spool.mark_ready(directory)
    return Recorded(robot_id, str(episode_id), pristine, manifest)


def record(
    fleet: Fleet,
    spec: EmbodimentSpec,
    pristine_root: Path,
    rng: random.Random,
    episodes_per_robot: int,
) -> dict[str, Recorded]:
    recorded = {}
    for robot_id in fleet.robots:
        for k in range(episodes_per_robot):
            episode = record_one(
                fleet, robot_id, spec, pristine_root, rng.randint(*FRAMES), f"chaos task {k}"
            )
            recorded[episode.episode_id] = episode
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


def catalog_rows(url: str) -> tuple[list[str], dict[str, str]]:
    """The episodes table's episode ids and every upload session's status, read from the catalog."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = list(conn.scalars(select(Episode.episode_id)))
            sessions = conn.execute(select(UploadSession.session_id, UploadSession.status))
            statuses = {session_id: status for session_id, status in sessions}
    finally:
        engine.dispose()
    return rows, statuses


# The verdict -------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the catalog and the store hold once everything settled, against what was recorded."""

    recorded: dict[str, Recorded]
    listed: list[str]  # episode ids as the API lists them, in order, duplicates kept
    rows: list[str]  # episode ids in the catalog's episodes table
    published: set[str]  # episode ids under the store's final keys (episodes/<robot>/<id>/)
    staging_left: list[str]  # keys left under uploads/
    statuses: dict[str, str]  # upload session -> status
    rejected: dict[str, str]  # episodes the robots set aside, with the reason
    corrupt: list[str]  # stored objects whose bytes differ from the recorded ones
    incomplete: list[str]  # listed episodes with objects missing from the store at the end
    violations: list[str]  # what the observer saw while the chaos ran

    @property
    def lost(self) -> set[str]:
        return set(self.recorded) - set(self.listed)

    @property
    def duplicated(self) -> int:
        """Listing entries beyond an episode's first, and table rows beyond the listed ones."""
        return len(self.listed) - len(set(self.listed)) + max(0, len(self.rows) - len(set(self.listed)))

    @property
    def never_recorded(self) -> set[str]:
        return set(self.listed) - set(self.recorded)

    @property
    def corrupt_episodes(self) -> set[str]:
        return {problem.split("/", 1)[0].split(":", 1)[0] for problem in self.corrupt}

    @property
    def unlisted_in_store(self) -> set[str]:
        """Final keys of episodes the catalog does not list: half-committed leftovers."""
        return self.published - set(self.listed)

    @property
    def partial(self) -> int:
        """Seen partial by the observer, incomplete at the end, or in the store but not the catalog."""
        return len(self.violations) + len(self.incomplete) + len(self.unlisted_in_store)

    def staging_by_status(self) -> dict[str, int]:
        """Objects left under uploads/<session>/, per the status of their upload session."""
        left: dict[str, int] = {}
        for key in self.staging_left:
            status = self.statuses.get(key.split("/")[1], "unknown")
            left[status] = left.get(status, 0) + 1
        return left


def judge(
    platform_url: str,
    store: S3ObjectStore,
    catalog_url: str,
    fleet: Fleet,
    recorded: dict[str, Recorded],
    observer: Observer,
    page_size: int = 5,
    max_pages: int = 100,
) -> Verdict:
    """Reads the catalog (API and table) and the store (straight from moto) once all is settled."""
    with httpx.Client(base_url=platform_url, headers=ADMIN, timeout=30.0) as client:
        listed = [item["episode_id"] for item in list_catalog(client, page_size, max_pages)]
    staging_left = [info.key for info in store.list("uploads/")]
    published = {info.key.split("/")[2] for info in store.list("episodes/")}
    rows, statuses = catalog_rows(catalog_url)
    corrupt: list[str] = []
    incomplete: list[str] = []
    for episode in recorded.values():
        if episode.episode_id not in listed:
            continue  # lost, counted as such
        try:
            stored_manifest = store.get_bytes(episode.prefix + MANIFEST_FILE)
            if stored_manifest != (episode.pristine / MANIFEST_FILE).read_bytes():
                corrupt.append(f"{episode.episode_id}: stored manifest.json differs from the recorded one")
            for entry in episode.manifest.files:
                original = (episode.pristine / entry.path).read_bytes()
                assert sha256_bytes(original) == entry.sha256
                if sha256_bytes(store.get_bytes(episode.prefix + entry.path)) != sha256_bytes(original):
                    corrupt.append(
                        f"{episode.episode_id}/{entry.path}: stored bytes differ from the recorded file"
                    )
        except ObjectNotFound as exc:
            incomplete.append(f"{episode.episode_id}: listed, but not all in the store at the end: {exc}")
    return Verdict(
        recorded=recorded,
        listed=listed,
        rows=rows,
        published=published,
        staging_left=staging_left,
        statuses=statuses,
        rejected=fleet.rejected(),
        corrupt=corrupt,
        incomplete=incomplete,
        violations=list(observer.violations),
    )
