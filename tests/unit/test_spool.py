from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import frame_images
from wamfleet.fleet_agent.spool import JOURNAL, Journal, Spool
from wamfleet.platform.contracts import EmbodimentSpec


def record(spool: Spool, spec: EmbodimentSpec, frames: int = 3, finish: bool = True) -> Path:
    writer = spool.start_recording(robot_id="robot-1", embodiment=spec, task="t")
    for i in range(frames):
        writer.add_frame(frame_images(spec, i), np.zeros(3), np.zeros(2))
    if finish:
        spool.finish(writer)
        return spool.dir("ready", str(writer.episode_id))
    return writer.directory


def test_recording_moves_to_ready_then_uploaded(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    spool = Spool(tmp_path)
    ready = record(spool, embodiment)
    assert list(spool.ready()) == [ready]
    assert spool.counts() == {"recording": 0, "ready": 1, "uploaded": 0, "rejected": 0}
    uploaded = spool.mark_uploaded(ready)
    assert (uploaded / "manifest.json").exists()
    assert spool.counts()["uploaded"] == 1


def test_recover_after_crash(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    spool = Spool(tmp_path)
    unfinished = record(spool, embodiment, finish=False)
    finished_writer = spool.start_recording(robot_id="robot-1", embodiment=embodiment, task="t")
    finished_writer.add_frame(frame_images(embodiment, 0), np.zeros(3), np.zeros(2))
    finished_writer.close()  # closed, but the process died before moving it to ready
    assert Spool(tmp_path).recover_recordings() == (1, 1)
    assert not unfinished.exists()
    assert [p.name for p in spool.ready()] == [str(finished_writer.episode_id)]


def test_journal_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL
    journal = Journal.load(path)
    journal.append(event="session", session_id="s1")
    journal.append(event="file", session_id="s1", path="data.parquet")
    with open(path, "a") as f:
        f.write('{"event": "file", "session_id": "s1", "pa')  # killed mid-write
    again = Journal.load(path)
    assert again.session_id == "s1"
    assert again.done == {"data.parquet"}
    again.append(event="session", session_id="s2")  # a new session starts from nothing
    assert Journal.load(path).done == set()


def test_retention_prunes_only_old_uploaded_episodes(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    spool = Spool(tmp_path)
    old = spool.mark_uploaded(record(spool, embodiment))
    new = spool.mark_uploaded(record(spool, embodiment))
    waiting = record(spool, embodiment)
    past = time.time() - 3600
    os.utime(old / JOURNAL, (past, past))
    assert spool.prune_uploaded(retention_s=600) == 1
    assert not old.exists() and new.exists() and waiting.exists()
    assert spool.prune_uploaded(retention_s=0) == 1
    assert waiting.exists()  # never touches episodes that are not uploaded


def test_rejected_episode_keeps_its_data_and_reason(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    spool = Spool(tmp_path)
    rejected = spool.mark_rejected(record(spool, embodiment), "HTTP 422: manifest.state_names do not match")
    assert (rejected / "manifest.json").exists()
    assert "state_names" in (rejected / "rejected.txt").read_text()


def test_mark_ready_needs_a_manifest(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    spool = Spool(tmp_path)
    unfinished = record(spool, embodiment, finish=False)
    with pytest.raises(ValueError, match="no manifest"):
        spool.mark_ready(unfinished)
