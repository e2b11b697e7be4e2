"""The robot agent against a live platform API on 127.0.0.1."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN, ADMIN_TOKEN, frame_images
from tests.integration.api_support import settings_for
from wamfleet.fleet_agent.client import AuthError, PlatformClient, RejectedError, TokenBucket, TransientError
from wamfleet.fleet_agent.spool import Spool
from wamfleet.fleet_agent.uploader import Uploader
from wamfleet.platform.api.app import create_app
from wamfleet.platform.api.server import serve_in_thread
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.contracts.ingest import EpisodeSummary


@pytest.fixture
def live(tmp_path: Path, catalog_url: str, embodiment: EmbodimentSpec) -> Iterator[tuple[str, str]]:
    """A platform API on a loopback port, on each catalog; yields (url, token of robot-1)."""
    app = create_app(settings_for(tmp_path, catalog_url))
    with serve_in_thread(app) as url:
        httpx.post(
            f"{url}/v1/embodiments", json=embodiment.model_dump(mode="json"), headers=ADMIN
        ).raise_for_status()
        response = httpx.post(
            f"{url}/v1/robots", json={"robot_id": "robot-1", "embodiment": "test-arm"}, headers=ADMIN
        )
        yield url, response.json()["token"]


def fill(spool: Spool, spec: EmbodimentSpec, episodes: int, frames: int = 6) -> list[str]:
    ids = []
    for _ in range(episodes):
        writer = spool.start_recording(robot_id="robot-1", embodiment=spec, task="stack the blocks")
        for i in range(frames):
            writer.add_frame(frame_images(spec, i), np.zeros(3), np.zeros(2))
        ids.append(str(spool.finish(writer).episode_id))
    return ids


def committed(url: str) -> list[str]:
    return [e["episode_id"] for e in httpx.get(f"{url}/v1/episodes", headers=ADMIN).json()["items"]]


def test_uploads_everything_ready_and_clears_the_spool(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    url, token = live
    spool = Spool(tmp_path / "spool")
    ids = fill(spool, embodiment, 3)
    uploader = Uploader(spool, PlatformClient(url, token))
    report = uploader.run_once()
    assert sorted(report.committed) == sorted(ids)
    assert report.files_sent == 9
    assert sorted(committed(url)) == sorted(ids)
    assert spool.counts() == {"recording": 0, "ready": 0, "uploaded": 0, "rejected": 0}  # retention 0


def test_resume_skips_files_already_received(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    url, token = live
    spool = Spool(tmp_path / "spool")
    (episode,) = fill(spool, embodiment, 1)
    client = PlatformClient(url, token)
    # A previous run sent one file, then died before journaling it.
    from wamfleet.fleet_agent.episode_format import load_manifest

    directory = spool.dir("ready", episode)
    ticket = client.open_upload(load_manifest(directory))
    first = ticket.files[0]
    client.put_file(first.url, directory / first.path, first.size, headers=first.headers)
    report = Uploader(spool, client, retention_s=3600).run_once()
    assert report.committed == [episode]
    assert (report.files_sent, report.files_skipped) == (2, 1)
    assert spool.counts()["uploaded"] == 1  # kept for the retention period


def test_refused_episode_is_set_aside_with_the_reason(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    url, token = live
    spool = Spool(tmp_path / "spool")
    other = embodiment.model_copy(update={"name": "unregistered-arm"})
    (episode,) = fill(spool, other, 1)
    report = Uploader(spool, PlatformClient(url, token)).run_once()
    assert report.rejected == [episode]
    reason = (spool.dir("rejected", episode) / "rejected.txt").read_text()
    assert "unregistered-arm v1 is not registered" in reason
    assert (spool.dir("rejected", episode) / "data.parquet").exists()


def test_unreachable_platform_defers_without_losing_anything(
    tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    spool = Spool(tmp_path / "spool")
    ids = fill(spool, embodiment, 2)
    sleeps: list[float] = []
    uploader = Uploader(
        spool, PlatformClient("http://127.0.0.1:9", "token", timeout_s=1), max_attempts=4, sleep=sleeps.append
    )
    report = uploader.run_once()
    assert sorted(report.deferred) == sorted(ids)
    assert [p.name for p in spool.ready()] == sorted(ids)
    assert len(sleeps) == 6  # 3 backoffs per episode, then it waits for the next pass


def test_bad_token_stops_the_agent(tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec) -> None:
    url, _ = live
    spool = Spool(tmp_path / "spool")
    fill(spool, embodiment, 1)
    with pytest.raises(AuthError):
        Uploader(spool, PlatformClient(url, "wfr_wrong")).run_once()
    assert len(list(spool.ready())) == 1


def test_backoff_is_full_jitter_and_capped() -> None:
    client = PlatformClient("http://127.0.0.1:9", "unused")
    uploader = Uploader(
        Spool.__new__(Spool), client, backoff_base_s=0.5, backoff_max_s=4.0, rng=random.Random(1)
    )
    for attempt in range(10):
        bound = min(4.0, 0.5 * 2**attempt)
        samples = [uploader.backoff(attempt) for _ in range(200)]
        assert all(0 <= s <= bound for s in samples)
        assert max(samples) > bound * 0.8  # spread over the whole window, not a fixed delay


def test_transient_errors_are_retried_then_succeed(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientError("HTTP 503")
        return "ok"

    uploader = Uploader(Spool(tmp_path), PlatformClient("http://127.0.0.1:9", "unused"), sleep=lambda _: None)
    assert uploader._retry("open", flaky) == "ok"
    assert calls["n"] == 3


# The cap is the agent's token bucket, on the robot's side: the catalog plays no part in it.
@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_bandwidth_cap_limits_average_rate(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    """A bundle several times the token bucket's burst, so the cap really has to hold the PUTs
    back; elapsed time is bounded from both sides (a small bundle inside the burst passed
    whatever the cap did)."""
    url, token = live
    spool = Spool(tmp_path / "spool")
    writer = spool.start_recording(robot_id="robot-1", embodiment=embodiment, task="stack the blocks")
    rng = np.random.default_rng(0)
    for _ in range(150):  # noise barely compresses: a few hundred KB
        images = {
            c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in embodiment.cameras
        }
        writer.add_frame(images, np.zeros(3), np.zeros(2))
    spool.finish(writer)
    size = sum(p.stat().st_size for p in next(spool.ready()).rglob("*") if p.is_file() and p.name[0] != ".")
    rate = 100_000
    burst = TokenBucket(rate).burst
    assert size > 3 * burst, size
    started = time.monotonic()
    report = Uploader(spool, PlatformClient(url, token), bandwidth_limit=rate).run_once()
    elapsed = time.monotonic() - started
    assert len(report.committed) == 1
    assert 3 * burst < report.bytes_sent <= size  # every data file (the manifest goes with the commit)
    assert elapsed >= (report.bytes_sent - burst) / rate  # cannot beat the cap
    assert elapsed <= report.bytes_sent / rate + 5.0  # and the cap is all that slows it down


def test_agent_cli_run_once_and_import_video(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    import av
    from typer.testing import CliRunner

    from wamfleet.fleet_agent.video_import import human_video_embodiment
    from wamfleet.platform.cli.main import app

    url, token = live
    spec = human_video_embodiment(size=64, fps=15)
    httpx.post(f"{url}/v1/embodiments", json=spec.model_dump(mode="json"), headers=ADMIN).raise_for_status()
    spool = Spool(tmp_path / "spool")
    fill(spool, embodiment, 2)
    env = {
        "WAMFLEET_AGENT_API_URL": url,
        "WAMFLEET_AGENT_ROBOT_ID": "robot-1",
        "WAMFLEET_AGENT_TOKEN": token,
        "WAMFLEET_AGENT_SPOOL_DIR": str(tmp_path / "spool"),
        "COLUMNS": "200",
    }
    runner = CliRunner()
    result = runner.invoke(app, ["agent", "run", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert "committed 2, rejected 0, deferred 0" in result.output

    # A 2-second 320x240 clip at 30 fps becomes a 15 fps, 64x64 video-only episode.
    clip = tmp_path / "demo.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(60):
            image = np.full((240, 320, 3), (i * 4) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    result = runner.invoke(app, ["agent", "import-video", str(clip), "--task", "fold the towel"], env=env)
    assert result.exit_code == 0, result.output
    assert "uploaded and committed" in result.output
    items = httpx.get(f"{url}/v1/episodes", params={"has_actions": "false"}, headers=ADMIN).json()["items"]
    assert len(items) == 1
    assert items[0]["source"] == "human_video"
    assert items[0]["embodiment"] == {"name": "human", "version": 1}
    assert 29 <= items[0]["num_frames"] <= 31
    assert items[0]["task"] == "fold the towel"

    missing = runner.invoke(
        app, ["agent", "import-video", str(tmp_path / "none.mp4"), "--task", "x"], env=env
    )
    assert missing.exit_code == 2
    assert "no such video file" in missing.output
    status = runner.invoke(app, ["agent", "status"], env=env)
    assert "ready      0" in status.output
    _ = ADMIN_TOKEN


def test_file_damaged_in_transit_is_refused_by_the_store_and_sent_again(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    """The store checks each PUT's body against the x-amz-checksum-sha256 its URL was signed
    for: the damaged copy is refused on arrival (nothing is stored), the agent finds its own
    file intact and sends it again at once, and the commit needs one round."""
    url, token = live
    spool = Spool(tmp_path / "spool")
    (episode,) = fill(spool, embodiment, 1)

    class FlippingLink(PlatformClient):
        """Corrupts one byte of the first video it sends, as a bad link would."""

        damaged = False
        puts = 0
        commits = 0

        def put_file(
            self,
            url: str,
            path: Path,
            size: int,
            throttle: TokenBucket | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.puts += 1
            if path.suffix == ".mp4" and not self.damaged:
                self.damaged = True
                bad = tmp_path / "bad.mp4"
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                bad.write_bytes(bytes(data))
                with pytest.raises(RejectedError) as refused:
                    super().put_file(url, bad, size, throttle, headers)
                assert refused.value.status == 400 and "x-amz-checksum-sha256" in str(refused.value)
                raise refused.value
            return super().put_file(url, path, size, throttle, headers)

        def commit(self, session_id: str) -> EpisodeSummary:
            self.commits += 1
            return super().commit(session_id)

    link = FlippingLink(url, token)
    report = Uploader(spool, link, backoff_base_s=0.01).run_once()
    assert report.committed == [episode]
    assert (report.files_sent, link.puts, link.commits) == (3, 4, 1)  # the video twice, one commit
    assert committed(url) == [episode]


def test_a_file_damaged_on_the_robot_is_refused_not_retried_forever(
    tmp_path: Path, live: tuple[str, str], embodiment: EmbodimentSpec
) -> None:
    """If the robot's own copy no longer has its manifest's SHA-256, no resend can help: the
    episode is set aside with the reason, after one refused PUT."""
    url, token = live
    spool = Spool(tmp_path / "spool")
    (episode,) = fill(spool, embodiment, 1)
    video = next(spool.dir("ready", episode).glob("videos/*.mp4"))
    data = bytearray(video.read_bytes())
    data[len(data) // 3] ^= 0xFF
    video.write_bytes(bytes(data))
    report = Uploader(spool, PlatformClient(url, token), backoff_base_s=0.01).run_once()
    assert report.rejected == [episode] and report.committed == []
    assert committed(url) == []


def test_commit_acknowledged_before_a_crash_needs_no_network(
    tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    spool = Spool(tmp_path / "spool")
    (episode,) = fill(spool, embodiment, 1)
    spool.journal(spool.dir("ready", episode)).append(event="committed")
    report = Uploader(spool, PlatformClient("http://127.0.0.1:9", "unused"), retention_s=60).run_once()
    assert report.committed == [episode]
    assert spool.counts()["uploaded"] == 1
