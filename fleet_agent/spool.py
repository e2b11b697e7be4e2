"""The robot's crash-safe episode spool: recording -> ready -> uploaded (or rejected).

Every state is a directory and every transition an atomic rename, so a robot that loses
power mid-way finds each episode in exactly one state. An upload journal inside a ready
episode records which files of which upload session are done; it is appended and fsynced
line by line, so a killed uploader resumes without sending finished files again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest, Outcome
from wamfleet.platform.contracts.ids import new_episode_id

log = logging.getLogger(__name__)

STATES = ("recording", "ready", "uploaded", "rejected")
JOURNAL = ".upload-journal.jsonl"


@dataclass
class Journal:
    """Append-only record of one episode's upload progress."""

    path: Path
    session_id: str | None = None
    done: set[str] = field(default_factory=set)
    committed: bool = False

    @classmethod
    def load(cls, path: Path) -> Journal:
        journal = cls(path)
        if not path.exists():
            return journal
        raw = path.read_bytes()
        good = 0  # bytes of complete, parseable lines
        for line in raw.splitlines(keepends=True):
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not line.endswith(b"\n"):
                break
            journal._apply(event)
            good += len(line)
        if good < len(raw):
            # A torn last line from a crash mid-write: cut it, or the next append would fuse with it.
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return journal

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "session":
            if event["session_id"] != self.session_id:
                self.done = set()
            self.session_id = event["session_id"]
        elif kind == "file" and event.get("session_id") == self.session_id:
            self.done.add(event["path"])
        elif kind == "committed":
            self.committed = True

    def append(self, **event: Any) -> None:
        self._apply(event)
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)

    def dir(self, state: str, episode_id: str) -> Path:
        return self.root / state / episode_id

    def start_recording(self, **writer_kwargs: Any) -> EpisodeWriter:
        """An EpisodeWriter into recording/<episode_id>; pass it to `finish` when done."""
        episode_id = writer_kwargs.pop("episode_id", None) or new_episode_id()
        return EpisodeWriter(self.dir("recording", str(episode_id)), episode_id=episode_id, **writer_kwargs)

    def finish(
        self, writer: EpisodeWriter, outcome: Outcome | None = None, **close_kwargs: Any
    ) -> EpisodeManifest:
        """Closes the recording (manifest last) and hands it to the uploader."""
        manifest = writer.close(outcome, **close_kwargs)
        self.mark_ready(writer.directory)
        return manifest

    def mark_ready(self, directory: Path) -> Path:
        if not (directory / MANIFEST_FILE).exists():
            raise ValueError(f"{directory}: no manifest, not a finished episode")
        target = self.dir("ready", directory.name)
        os.rename(directory, target)
        _fsync_dir(target.parent)
        return target

    def recover_recordings(self) -> tuple[int, int]:
        """After a crash: finished recordings become ready, unfinished ones are discarded."""
        ready = discarded = 0
        for directory in sorted((self.root / "recording").iterdir()):
            if (directory / MANIFEST_FILE).exists():
                self.mark_ready(directory)
                ready += 1
            else:
                log.warning("discarding unfinished recording %s (no manifest)", directory.name)
                shutil.rmtree(directory, ignore_errors=True)
                discarded += 1
        return ready, discarded

    def ready(self) -> Iterator[Path]:
        """Ready episodes, oldest first (episode ids are UUIDv7)."""
        yield from sorted(p for p in (self.root / "ready").iterdir() if p.is_dir())

    def journal(self, directory: Path) -> Journal:
        return Journal.load(directory / JOURNAL)

    def mark_uploaded(self, directory: Path) -> Path:
        target = self.dir("uploaded", directory.name)
        if target.exists():  # a previous run renamed it already, then crashed: keep one copy
            shutil.rmtree(directory)
            return target
        os.rename(directory, target)
        _fsync_dir(target.parent)
        (target / JOURNAL).touch()  # its mtime starts the retention clock
        return target

    def mark_rejected(self, directory: Path, reason: str) -> Path:
        target = self.dir("rejected", directory.name)
        os.rename(directory, target)
        (target / "rejected.txt").write_text(reason + "\n")
        return target

    def prune_uploaded(self, retention_s: float) -> int:
        """Deletes uploaded episodes older than the retention; only ever committed ones."""
        cutoff = time.time() - retention_s
        removed = 0
        for directory in (self.root / "uploaded").iterdir():
            marker = directory / JOURNAL
            stamp = marker.stat().st_mtime if marker.exists() else directory.stat().st_mtime
            if stamp <= cutoff:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        return removed

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for p in (self.root / state).iterdir() if p.is_dir()) for state in STATES}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
