"""Uploads ready episodes from the spool: resumable, retried with backoff, bandwidth-capped.

The local copy is moved out of `ready` only after the platform acknowledged the commit, and
deleted only after the retention period. A refused episode is set aside with the platform's
reason, never deleted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from wamfleet.fleet_agent.client import (
    AuthError,
    PlatformClient,
    RejectedError,
    TokenBucket,
    TransientError,
    UrlExpired,
)
from wamfleet.fleet_agent.config import AgentSettings
from wamfleet.fleet_agent.episode_format import BundleError, load_manifest
from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.ingest import UploadTarget

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_CYCLES = 3  # upload rounds per episode (fresh URLs, re-sending refused files)


@dataclass
class UploadReport:
    committed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    files_sent: int = 0
    bytes_sent: int = 0
    files_skipped: int = 0


class GaveUp(Exception):
    """A request kept failing transiently; the episode stays ready for a later pass."""


class Uploader:
    def __init__(
        self,
        spool: Spool,
        client: PlatformClient,
        *,
        bandwidth_limit: int = 0,
        retention_s: float = 0.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spool = spool
        self.client = client
        self.throttle = TokenBucket(bandwidth_limit) if bandwidth_limit > 0 else None
        self.retention_s = retention_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: AgentSettings, spool: Spool | None = None) -> Uploader:
        if settings.token is None:
            raise ValueError("token: the agent needs its robot token (WAMFLEET_AGENT_TOKEN)")
        client = PlatformClient(settings.api_url, settings.token.get_secret_value(), settings.timeout_s)
        return cls(
            spool or Spool(settings.spool_dir),
            client,
            bandwidth_limit=settings.bandwidth_limit,
            retention_s=settings.retention_s,
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
        )

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        for attempt in range(self.max_attempts):
            try:
                return call()
            except TransientError as exc:
                if attempt == self.max_attempts - 1:
                    raise GaveUp(f"{what}: {exc}") from exc
                delay = self.backoff(attempt)
                log.info("%s failed (%s); retry %d in %.2fs", what, exc, attempt + 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _put(self, target: UploadTarget, path: Path, sha256: str) -> None:
        """One PUT. A 400 from the store is most often its checksum check refusing a body damaged
        on the way: if the file here still has the manifest's SHA-256, sending it again is worth it
        (a TransientError); if not, the recording itself is damaged and the episode is refused."""
        try:
            self.client.put_file(target.url, path, target.size, self.throttle, target.headers)
        except RejectedError as exc:
            if exc.status != 400:
                raise
            if sha256_file(path) != sha256:
                raise BundleError(target.path, "the file no longer has its manifest's SHA-256") from exc
            raise TransientError(f"PUT {target.path} refused ({exc}); the file here is intact") from exc

    def upload_episode(self, directory: Path, report: UploadReport) -> None:
        manifest = load_manifest(directory)
        declared = {entry.path: entry.sha256 for entry in manifest.files}
        journal = self.spool.journal(directory)
        if journal.committed:  # acknowledged before a crash; only the move was left
            self.spool.mark_uploaded(directory)
            report.committed.append(directory.name)
            return
        for cycle in range(MAX_CYCLES):
            ticket = self._retry("open upload", lambda: self.client.open_upload(manifest))
            if ticket.status == "committed":
                break
            session_id = str(ticket.session_id)
            if journal.session_id != session_id:
                journal.append(event="session", session_id=session_id)
            try:
                for target in ticket.files:
                    # The platform's word on what it holds decides; the journal records what was sent.
                    if target.received:
                        report.files_skipped += 1
                        continue
                    if target.path in journal.done:
                        log.warning(
                            "%s: sent before, but the platform does not hold it; sending again", target.path
                        )
                    path = directory / target.path
                    digest = declared[target.path]
                    self._retry(f"PUT {target.path}", lambda t=target, p=path, d=digest: self._put(t, p, d))  # type: ignore[misc]
                    journal.append(event="file", session_id=session_id, path=target.path)
                    report.files_sent += 1
                    report.bytes_sent += target.size
            except UrlExpired as exc:
                log.info("upload URLs expired (%s); asking for fresh ones", exc)
                continue
            try:
                self._retry("commit", lambda sid=session_id: self.client.commit(sid))  # type: ignore[misc]
            except RejectedError as exc:
                # 422: a file arrived damaged; the platform dropped it, so the next cycle re-sends it.
                if exc.status != 422 or cycle == MAX_CYCLES - 1:
                    raise
                log.warning("commit refused (%s); sending the refused files again", exc)
                continue
            break
        else:
            raise GaveUp(f"{directory.name}: no commit after {MAX_CYCLES} upload cycles")
        journal.append(event="committed")
        self.spool.mark_uploaded(directory)
        report.committed.append(directory.name)

    def run_once(self) -> UploadReport:
        """Uploads everything ready now; returns what happened. Raises AuthError on a bad token."""
        report = UploadReport()
        for directory in self.spool.ready():
            try:
                self.upload_episode(directory, report)
            except (RejectedError, BundleError) as exc:
                log.error("episode %s refused: %s", directory.name, exc)
                self.spool.mark_rejected(directory, str(exc))
                report.rejected.append(directory.name)
            except GaveUp as exc:
                log.warning("leaving episode %s for later: %s", directory.name, exc)
                report.deferred.append(directory.name)
        self.spool.prune_uploaded(self.retention_s)
        return report

    def run(self, stop: threading.Event, poll_s: float = 2.0) -> None:
        """Uploads as episodes become ready until `stop` is set."""
        while not stop.is_set():
            report = self.run_once()
            if report.committed or report.rejected:
                log.info("committed %d, rejected %d", len(report.committed), len(report.rejected))
            stop.wait(poll_s)


__all__ = ["AuthError", "GaveUp", "UploadReport", "Uploader"]
