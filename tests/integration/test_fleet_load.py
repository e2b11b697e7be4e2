"""benchmarks/fleet_load.py keeps working: `wamfleet platform serve` replicas on one PostgreSQL
catalog and one moto S3 process, robots spread over them, every figure it prints a number, and
its count says each episode arrived exactly once and whole (and is not vacuous: it notices a
store that lost the episodes)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from benchmarks.fleet_load import Config, report, run, tally
from benchmarks.ingest import ACCESS_KEY, PLATFORM_BUCKET, REGION, SECRET_KEY
from tests.conftest import catalog_on

# Platform replicas in their own processes: `scripts/test.sh --fast` skips it.
pytestmark = pytest.mark.slow

REPLICAS, ROBOTS = 2, 8


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty PostgreSQL catalog; skipped when no server listens on 127.0.0.1:5432."""
    with catalog_on("postgresql", request, tmp_path) as url:
        yield url


def test_a_small_fleet_over_two_replicas_arrives_exactly_once(
    pg: str, tmp_path: Path, moto_endpoint: str
) -> None:
    cfg = Config(
        robots=ROBOTS,
        episodes_per_robot=1,
        replicas=(REPLICAS,),
        frames=8,
        size=32,
        templates=2,
        max_seconds=90.0,
        catalog_url=pg,
        work=tmp_path / "work",
    )
    lines: list[str] = []
    rep = run(cfg, lines.append)

    assert [p.replicas for p in rep.phases] == [REPLICAS] and not rep.skipped_counts, lines
    phase = rep.phases[0]
    assert (phase.robots, phase.bundles, phase.committed, phase.run.skipped) == (ROBOTS, ROBOTS, ROBOTS, 0)
    assert len({c.api_url for c in phase.run.clients}) == REPLICAS  # robots spread over both replicas
    figures = phase.figures()
    assert all(math.isfinite(v) for v in figures.values()), figures
    assert figures["commits/s"] > 0 and figures["ingest MB/s"] > 0 and figures["fput MB/s"] > 0, figures
    assert 0 < figures["commit p50 ms"] <= figures["commit p99 ms"], figures
    assert phase.fput_bytes == phase.committed_bytes > 0
    assert phase.count.exact and phase.count.uploaded == ROBOTS, phase.count

    final = rep.final
    assert final is not None and final.exact, final
    uploaded = ROBOTS + REPLICAS  # and one warm-up episode per replica
    assert final.uploaded == final.acknowledged == final.catalog_rows == uploaded, final
    assert final.lost == final.duplicated == final.never_committed == final.leftovers == 0, final
    assert report(rep, 1.0, lines.append) is True
    assert lines[-2].startswith("final count") and lines[-2].endswith(": exactly once"), lines[-2]

    # The same catalog against a store that holds none of the bundles: all of them lost.
    empty = Minio(moto_endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    if not empty.bucket_exists(PLATFORM_BUCKET):
        empty.make_bucket(PLATFORM_BUCKET)
    broken = tally(rep.ledger, "", pg, moto_endpoint)
    assert (broken.partial, broken.lost, broken.exact) == (uploaded, uploaded, False), broken
