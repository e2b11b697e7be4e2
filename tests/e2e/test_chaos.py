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

This is the short version; benchmarks/soak.py runs the same harness (tests/support/chaos.py)
for a thousand trials and more, and counts what these assertions check.

Set WAMFLEET_CHAOS_SEED to replay a run's random choices (process timing still varies).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import catalog_on, in_ci, make_s3_store, postgres_listening
from tests.support.chaos import (
    DRAIN_ROUNDS,
    FAULTS,
    HEADER_CUT_SHARE,
    KILL_AFTER_S,
    Fleet,
    Observer,
    Platform,
    Restarter,
    embodiment,
    judge,
    platform_env,
    record,
    register,
    running,
)
from tests.support.faulty_proxy import FaultyProxy
from wamfleet.platform.net import free_port

# The timeout is a guard against hangs: the trials stop at TRIALS_CAP_S however slow the box is.
pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(600)]

ROBOTS = ["chaos-1", "chaos-2", "chaos-3"]
EPISODES_PER_ROBOT = 4
# 30 kill the agents at least MIN_KILLED times; benchmarks/soak.py runs a thousand and more.
TRIALS = 30
# Agents SIGKILLed while they had episodes to upload: what the trials are there for. Once the
# spools are empty a trial's agent finds nothing to do and exits by itself.
MIN_KILLED = 10
MIN_RESTARTS = 3
# Each trial starts a CLI (about 1.75 s on 2 idle cores, several times that on a busy box) next
# to platform restarts, so the time allowed for the trials is scaled to an agent start measured
# before the chaos: TRIALS x (start + mean wait before the kill) x TRIAL_SLACK, within bounds.
TRIAL_SLACK = 2.0
TRIALS_FLOOR_S = 90.0
TRIALS_CAP_S = 150.0  # on a box that busy, fewer trials rather than a longer test


def trials_deadline_s(agent_start_s: float) -> float:
    """The time allowed for TRIALS kill trials, given how long one agent takes to start."""
    per_trial = agent_start_s + sum(KILL_AFTER_S) / 2
    return min(max(TRIALS * per_trial * TRIAL_SLACK, TRIALS_FLOOR_S), TRIALS_CAP_S)


@pytest.fixture
def chaos_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """PostgreSQL, the production catalog, when a server listens (and under CI=true, where its
    absence fails the test); SQLite otherwise. One catalog, not both: a run takes minutes."""
    kind = "postgresql" if postgres_listening() or in_ci() else "sqlite"
    with catalog_on(kind, request, tmp_path) as url:
        yield url


def test_every_episode_lands_once_and_whole_under_chaos(
    tmp_path: Path, moto_endpoint: str, chaos_catalog: str
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
    spec = embodiment()

    platform_log = open(logs / "platform.log", "ab")  # noqa: SIM115 - closed on the way out below
    agent_log = open(logs / "agents.log", "ab")  # noqa: SIM115
    proxy = FaultyProxy(
        moto_endpoint,
        seed=rng.randrange(1 << 32),
        header_cut_share=HEADER_CUT_SHARE,
        verify_checksums=True,  # moto does not check bodies against their digests; S3 does
    ).start()
    env = platform_env(
        s3_endpoint=proxy.endpoint, bucket=bucket, catalog_url=chaos_catalog, data_dir=data_dir
    )
    platform = Platform(env, free_port(), platform_log)
    restarter = Restarter(platform, random.Random(rng.randrange(1 << 32)))
    observer: Observer | None = None

    def stop_observer() -> None:  # the observer starts once the platform is up
        if observer is not None:
            observer.stop()

    def close_logs() -> None:
        platform_log.close()
        agent_log.close()

    with running(close_logs, proxy.stop, platform.stop, restarter.stop, stop_observer):
        # Set up with the network healthy: the bucket, the embodiment, the robots, the episodes.
        platform.start()
        tokens = register(platform.url, spec, ROBOTS)
        fleet = Fleet(tmp_path / "spools", platform.url, tokens, agent_log)
        # How long an agent takes to start on this box now (its spool is still empty).
        agent_start_s = max(fleet.time_start(ROBOTS[0]) for _ in range(2))
        deadline_s = trials_deadline_s(agent_start_s)
        recorded = record(fleet, spec, tmp_path / "pristine", rng, EPISODES_PER_ROBOT)
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
            robot_id = rng.choice(busy or ROBOTS)
            fleet.kill_trial(robot_id, rng.uniform(*KILL_AFTER_S))
        chaos_s = time.monotonic() - trials_started

        # Heal: no more faults or restarts; each robot's agent runs until its spool is empty.
        proxy.pass_through()
        restarter.stop()
        assert restarter.error is None, f"restarting the platform failed: {restarter.error!r}"
        platform.ensure_up()
        drain_runs = fleet.drain()
        left = {r: fleet.ready(r) for r in ROBOTS if fleet.ready(r)}
        assert not left, f"spools not empty after {DRAIN_ROUNDS} healthy agent rounds: {left}"

        # One last look by the observer with everything settled, then stop it.
        observer.settle()
        verdict = judge(platform.url, moto, chaos_catalog, fleet, recorded, observer)
        faults = proxy.counts()

    trials = fleet.trials
    killed = sum(1 for t in trials if not t.exited_by_itself)
    killed_at_work = sum(1 for t in trials if t.ready_before and not t.exited_by_itself)
    productive = sum(1 for t in trials if t.ready_before)
    ids = verdict.listed
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
        f"{len(verdict.rejected)} episodes refused; {len(verdict.staging_left)} staging objects left "
        f"{verdict.staging_by_status()}"
    )
    print(
        f"time: an agent starts in {agent_start_s:.2f}s, trials allowed {deadline_s:.0f}s, "
        f"chaos phase {chaos_s:.1f}s, whole test {time.monotonic() - started:.1f}s; "
        f"catalog {chaos_catalog.split(':', 1)[0]}"
    )

    # The robots agree with the catalog: nothing was refused.
    assert not verdict.rejected, (
        f"episodes the platform refused (robots set them aside for good): {verdict.rejected}"
    )

    # The catalog: exactly the recorded episodes, each once.
    assert len(ids) == len(set(ids)), f"the catalog lists duplicates: {ids}"
    assert set(ids) == set(recorded), (
        f"missing from the catalog: {sorted(verdict.lost)}; never recorded: {sorted(verdict.never_recorded)}"
    )
    assert len(verdict.rows) == len(recorded), (
        f"the episodes table holds {len(verdict.rows)} rows, {len(recorded)} were recorded"
    )
    # The final keys hold exactly the catalog's episodes: nothing half-committed was left there.
    assert verdict.published == set(ids), (
        f"in the store but not the catalog: {sorted(verdict.unlisted_in_store)}"
    )

    # Byte-identical: every object in the store hashes like the robot's original.
    assert not verdict.incomplete, "\n".join(verdict.incomplete)
    assert not verdict.corrupt, "\n".join(verdict.corrupt)

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
