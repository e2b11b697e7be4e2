"""Upload sessions and commits: how an episode gets into the catalog exactly once, whole.

Robots upload into staging keys (`uploads/<session>/<file>`) through URLs that point nowhere
else. Commit copies the staged files to the episode's final keys, which only the platform
writes, checks each file's SHA-256 against the manifest (the store computes it while it copies,
or the platform reads the bytes back: `store_checksums`), writes the manifest, and records the
episode in one transaction. Every step can be repeated, so a commit retried after a crash or a restart of
the platform finishes the same way; a robot's late write to staging can never change an
accepted episode.

The final keys never keep an episode the catalog lacks: a commit whose catalog insert fails
removes what it published, and one that died between publishing and recording is finished by
the robot's retry or, once its session expires, removed by the sweeper. Recording, that
removal and the sweeper hold the episode's lock (`queries.lock_episode`), and recording checks
under it that the published bundle is still whole, so a removal never races a recording.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from wamfleet.platform.catalog import ingest_metrics, queries
from wamfleet.platform.catalog.db import Catalog
from wamfleet.platform.catalog.tables import Episode, Robot, UploadSession
from wamfleet.platform.contracts.episode import MANIFEST_FILE, EpisodeManifest, bundle_prefix
from wamfleet.platform.contracts.ingest import UploadTarget, UploadTicket
from wamfleet.platform.storage.base import ObjectNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)


class IngestError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(IngestError):
    status_code = 404


class Forbidden(IngestError):
    status_code = 403


class Conflict(IngestError):
    status_code = 409


class Gone(IngestError):
    status_code = 410


class TooLarge(IngestError):
    status_code = 413


class Invalid(IngestError):
    status_code = 422


class Unavailable(IngestError):
    status_code = 503


class _BundleChanged(Exception):
    """What this attempt published was removed or replaced before it could be recorded."""


MAX_PUBLISH_ATTEMPTS = 3


def manifest_bytes(manifest: EpisodeManifest) -> bytes:
    """The manifest exactly as the platform stores it (and hashes it for the catalog)."""
    return manifest.model_dump_json(indent=2).encode()


def staging_key(session_id: str, path: str) -> str:
    return f"uploads/{session_id}/{path}"


def scratch_key(session_id: str, attempt: str, path: str) -> str:
    """Where one commit attempt keeps its private, verified copy of a file."""
    return f"commits/{session_id}/{attempt}/{path}"


@dataclass
class IngestService:
    catalog: Catalog
    store: ObjectStore
    url_expiry: timedelta
    session_ttl: timedelta
    max_file_bytes: int
    # Whether a SHA-256 the store reports for its own copy is taken as the bytes' (Settings.store_checksums).
    trust_store_checksums: bool = True
    # Called between commit steps; tests use it to crash a commit at a chosen point.
    step_hook: Callable[[str], None] | None = None

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    # Opening ---------------------------------------------------------------------------

    def _check_manifest(self, robot: Robot, manifest: EpisodeManifest) -> None:
        if manifest.robot_id != robot.robot_id:
            raise Forbidden(f"manifest.robot_id {manifest.robot_id!r} is not this robot ({robot.robot_id!r})")
        for entry in manifest.files:
            if entry.size > self.max_file_bytes:
                raise TooLarge(
                    f"{entry.path}: {entry.size} bytes exceeds the {self.max_file_bytes}-byte limit"
                )
        with self.catalog.session() as s:
            spec = queries.get_embodiment(s, manifest.embodiment.name, manifest.embodiment.version)
        if spec is None:
            raise Invalid(
                f"manifest.embodiment: {manifest.embodiment.name} v{manifest.embodiment.version} "
                "is not registered"
            )
        if [c.name for c in manifest.cameras] != [c.name for c in spec.cameras]:
            raise Invalid(
                f"manifest.cameras: {[c.name for c in manifest.cameras]} do not match the embodiment's "
                f"{[c.name for c in spec.cameras]}"
            )
        if manifest.state_names != spec.state_names:
            raise Invalid("manifest.state_names do not match the embodiment's state_names")
        if manifest.has_actions and manifest.action_names != spec.action_names:
            raise Invalid("manifest.action_names do not match the embodiment's action_names")

    def _ticket(self, upload: UploadSession, status: str, fresh: bool = False) -> UploadTicket:
        manifest = EpisodeManifest.model_validate(upload.manifest)
        targets = []
        for entry in manifest.files:
            key = staging_key(upload.session_id, entry.path)
            received = False
            if status == "open" and not fresh:  # a session made just now has nothing staged yet
                with contextlib.suppress(ObjectNotFound):
                    received = self.store.stat(key).size == entry.size
            put = self.store.presigned_put(key, self.url_expiry, entry.sha256) if status == "open" else None
            targets.append(
                UploadTarget(
                    path=entry.path,
                    size=entry.size,
                    url=put.url if put else "",
                    headers=put.headers if put else {},
                    received=received or status == "committed",
                )
            )
        return UploadTicket(
            session_id=upload.session_id,  # type: ignore[arg-type]
            episode_id=manifest.episode_id,
            status="committed" if status == "committed" else "open",
            expires_at=upload.expires_at,
            files=targets,
        )

    def open_upload(self, robot: Robot, manifest: EpisodeManifest) -> UploadTicket:
        self._check_manifest(robot, manifest)
        digest = queries.manifest_digest(manifest)
        with self.catalog.session() as s:
            episode = queries.get_episode(s, manifest.episode_id)
            if episode is not None:
                return self._committed_ticket(s, robot, episode, digest)
            upload, created = queries.open_upload_session(s, manifest, self.session_ttl)
            queries.audit(
                s,
                f"robot:{robot.robot_id}",
                "upload.open",
                str(manifest.episode_id),
                upload=upload.session_id,
            )
        return self._ticket(upload, "open", fresh=created)

    def _committed_ticket(self, s: Session, robot: Robot, episode: Episode, digest: str) -> UploadTicket:
        if episode.robot_id != robot.robot_id:
            raise Conflict(f"episode {episode.episode_id} belongs to another robot")
        if episode.manifest_sha256 != digest:
            raise Conflict(f"episode {episode.episode_id} is already committed with a different manifest")
        manifest = EpisodeManifest.model_validate(episode.manifest)
        committed = queries.committed_session(s, episode.episode_id)
        return UploadTicket(
            session_id=committed.session_id if committed else manifest.episode_id,  # type: ignore[arg-type]
            episode_id=manifest.episode_id,
            status="committed",
            expires_at=episode.committed_at,
            files=[UploadTarget(path=f.path, size=f.size, url="", received=True) for f in manifest.files],
        )

    def get_ticket(self, robot: Robot | None, session_id: str) -> UploadTicket:
        upload = self._session_for(robot, session_id)
        return self._ticket(upload, upload.status)

    def _session_for(self, robot: Robot | None, session_id: str) -> UploadSession:
        with self.catalog.session() as s:
            upload = queries.get_upload_session(s, session_id)
        if upload is None or (robot is not None and upload.robot_id != robot.robot_id):
            raise NotFound(f"no upload session {session_id}")
        return upload

    def staged_size_limit(self, key: str) -> int | None:
        """The declared size of the file an open session expects at this staging key, else None."""
        parts = key.split("/", 2)
        if len(parts) != 3 or parts[0] != "uploads":
            return None
        with self.catalog.session() as s:
            upload = queries.get_upload_session(s, parts[1])
        if upload is None or upload.status != "open" or upload.expires_at <= queries.now():
            return None
        manifest = EpisodeManifest.model_validate(upload.manifest)
        for entry in manifest.files:
            if entry.path == parts[2]:
                return entry.size
        return None

    # Committing -------------------------------------------------------------------------

    def _committed(self, episode_id: str, manifest_sha256: str) -> Episode | None:
        with self.catalog.session() as s:
            episode = queries.get_episode(s, episode_id)
        if episode is not None and episode.manifest_sha256 != manifest_sha256:
            raise Conflict(f"episode {episode_id} is already committed with a different manifest")
        return episode

    def commit(self, robot: Robot, session_id: str) -> Episode:
        upload = self._session_for(robot, session_id)
        manifest = EpisodeManifest.model_validate(upload.manifest)
        episode = self._committed(upload.episode_id, upload.manifest_sha256)
        if episode is not None:
            return episode
        if upload.status == "expired" or upload.expires_at <= queries.now():
            raise Gone(f"upload session {session_id} has expired; open a new one")
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            attempt = uuid.uuid4().hex
            try:
                self._publish(session_id, attempt, manifest)
            except (Invalid, ObjectNotFound):
                # A concurrent commit of this session may have finished and cleared the staging.
                episode = self._committed(upload.episode_id, upload.manifest_sha256)
                if episode is not None:
                    return episode
                raise
            finally:
                self._tidy([scratch_key(session_id, attempt, e.path) for e in manifest.files])
            try:
                episode = self._record(robot, session_id, manifest, upload.manifest_sha256)
            except _BundleChanged:
                continue  # a concurrent failed commit removed what this one published: publish again
            except IntegrityError:
                # A concurrent commit of the same episode won the race; it did the same work.
                winner = self._committed(upload.episode_id, upload.manifest_sha256)
                if winner is None:
                    self._unpublish(manifest, "recording it in the catalog failed")
                    raise
                return winner
            except BaseException as exc:
                self._unpublish(manifest, f"recording it in the catalog failed ({type(exc).__name__}: {exc})")
                raise
            self._step("recorded")
            self._tidy([staging_key(session_id, e.path) for e in manifest.files])
            return episode
        raise Unavailable(
            f"episode {manifest.episode_id}: concurrent commits kept removing each other's files; retry"
        )

    def _record(self, robot: Robot, session_id: str, manifest: EpisodeManifest, digest: str) -> Episode:
        """Records the published episode in one transaction, under the episode's lock."""
        episode_id = str(manifest.episode_id)
        with self.catalog.session() as s:
            queries.lock_episode(s, episode_id)
            existing = queries.get_episode(s, episode_id)
            if existing is not None:
                if existing.manifest_sha256 != digest:
                    raise Conflict(f"episode {episode_id} is already committed with a different manifest")
                return existing
            stored = queries.get_upload_session(s, session_id)
            assert stored is not None
            if stored.status != "open":
                raise Gone(f"upload session {session_id} has expired; open a new one")
            if not self._published_whole(manifest):
                raise _BundleChanged(episode_id)
            episode = queries.add_episode(s, manifest)
            stored.status = "committed"
            stored.committed_at = queries.now()
            queries.audit(
                s,
                f"robot:{robot.robot_id}",
                "episode.commit",
                episode_id,
                upload=session_id,
                bytes=manifest.total_bytes,
            )
            s.flush()  # a value the catalog cannot store fails here, while the transaction is open
            self._step("recording")
        return episode

    def _published_whole(self, manifest: EpisodeManifest) -> bool:
        """Whether the final keys hold this manifest and files of the sizes it lists."""
        try:
            if self.store.get_bytes(manifest.prefix + MANIFEST_FILE) != manifest_bytes(manifest):
                return False
            return all(self.store.stat(manifest.prefix + e.path).size == e.size for e in manifest.files)
        except ObjectNotFound:
            return False

    def _remove_published(self, prefix: str) -> list[str]:
        """Deletes an unrecorded episode's final keys, the manifest (its commit marker) first."""
        keys = sorted(
            (info.key for info in self.store.list(prefix)), key=lambda k: k != prefix + MANIFEST_FILE
        )
        for key in keys:
            self.store.delete(key)
        return keys

    def _unpublish(self, manifest: EpisodeManifest, why: str) -> None:
        """After a failed recording: removes what was published, unless a concurrent commit
        recorded the episode meanwhile. If this fails too, the sweeper removes it later."""
        episode_id = str(manifest.episode_id)
        try:
            with self.catalog.session() as s:
                queries.lock_episode(s, episode_id)
                if queries.get_episode(s, episode_id) is not None:
                    return
                removed = self._remove_published(manifest.prefix)
        except Exception as exc:  # noqa: BLE001 - the original error is what the caller reports
            log.error(
                "episode %s: %s after publishing, and removing what was published failed too (%s); "
                "the sweeper removes it once the upload session expires",
                episode_id,
                why,
                exc,
            )
            return
        if removed:
            log.warning(
                "episode %s: %s after publishing; removed its %d published objects",
                episode_id,
                why,
                len(removed),
            )

    def _discard_staged(self, session_id: str, path: str) -> None:
        """A staged file that cannot be right goes, so the robot sees it as not received and re-sends."""
        self._tidy([staging_key(session_id, path)])

    def _tidy(self, keys: list[str]) -> None:
        """Best-effort deletes; whatever fails here the sweeper removes later."""
        for key in keys:
            try:
                self.store.delete(key)
            except StorageError as exc:
                log.warning("leaving %s for the sweeper: %s", key, exc)

    def _publish(self, session_id: str, attempt: str, manifest: EpisodeManifest) -> None:
        """Staging -> this attempt's private scratch copy -> verified -> final keys -> manifest.

        Final keys only ever receive bytes this attempt verified itself, so neither a robot
        writing to staging meanwhile nor a concurrent attempt can put unverified bytes there.
        """
        for entry in manifest.files:  # everything must be staged before anything is copied
            try:
                size = self.store.stat(staging_key(session_id, entry.path)).size
            except ObjectNotFound:
                raise Invalid(f"{entry.path}: not uploaded") from None
            if size != entry.size:
                self._discard_staged(session_id, entry.path)
                raise Invalid(
                    f"{entry.path}: uploaded {size} bytes, manifest declares {entry.size}; upload it again"
                )
        digests: dict[str, str | None] = {}
        for entry in manifest.files:
            try:
                digests[entry.path] = self.store.copy_verified(
                    staging_key(session_id, entry.path),
                    scratch_key(session_id, attempt, entry.path),
                    entry.size,
                )
            except ObjectNotFound:
                raise Invalid(f"{entry.path}: not uploaded") from None
            self._step(f"copied:{entry.path}")
        for entry in manifest.files:
            digest = self._scratch_digest(session_id, attempt, entry.path, digests[entry.path])
            if digest != entry.sha256:
                self._discard_staged(session_id, entry.path)
                raise Invalid(f"{entry.path}: sha256 {digest} does not match the manifest; upload it again")
        self._step("verified")
        for entry in manifest.files:
            self.store.copy(
                scratch_key(session_id, attempt, entry.path), manifest.prefix + entry.path, entry.size
            )
        self._step("published")
        self.store.put_bytes(manifest.prefix + MANIFEST_FILE, manifest_bytes(manifest))
        self._step("manifest-written")

    def _scratch_digest(self, session_id: str, attempt: str, path: str, reported: str | None) -> str:
        """The SHA-256 of this attempt's private copy: the one the store computed while copying,
        when it computed one and is trusted to; otherwise read back through this process."""
        if reported is not None and self.trust_store_checksums:
            ingest_metrics.VERIFICATIONS.labels("store_checksum").inc()
            return reported
        why = "store_checksums is read-back" if reported is not None else "the store reported no SHA-256"
        log.warning("%s: verifying by reading the bytes back (%s)", path, why)
        ingest_metrics.VERIFICATIONS.labels("read_back").inc()
        return self.store.sha256(scratch_key(session_id, attempt, path))

    def expire_stale_sessions(self) -> int:
        """Expires overdue sessions (removing any episode one published but never recorded), then
        removes staged and scratch files no open session owns. Returns how many expired."""
        with self.catalog.session() as s:
            stale = [(u.session_id, u.episode_id) for u in queries.stale_upload_sessions(s)]
        expired = 0
        for session_id, episode_id in stale:
            try:
                expired += self._expire(session_id, episode_id)
            except Exception:
                # The session stays open (and past due): the next sweep tries again.
                log.exception("expiring upload session %s (episode %s) failed", session_id, episode_id)
        orphans: dict[str, list[str]] = {}
        for prefix in ("uploads/", "commits/"):
            for info in self.store.list(prefix):
                orphans.setdefault(info.key.split("/", 2)[1], []).append(info.key)
        if orphans:
            with self.catalog.session() as s:
                still_open = queries.open_session_ids(s, list(orphans))
            for session_id, keys in orphans.items():
                if session_id not in still_open:
                    self._tidy(keys)
        return expired

    def _expire(self, session_id: str, episode_id: str) -> bool:
        """Expires one session under its episode's lock; if the catalog lacks the episode and no
        other session of it is open, whatever was published under its final keys goes too."""
        with self.catalog.session() as s:
            queries.lock_episode(s, episode_id)
            upload = queries.get_upload_session(s, session_id)
            if upload is None or upload.status != "open" or upload.expires_at > queries.now():
                return False  # committed or renewed meanwhile
            upload.status = "expired"
            queries.audit(s, "platform", "upload.expire", episode_id, upload=session_id)
            removed: list[str] = []
            if queries.get_episode(s, episode_id) is None and not queries.open_sessions_of_episode(
                s, episode_id
            ):
                removed = self._remove_published(bundle_prefix(upload.robot_id, episode_id))
                if removed:
                    queries.audit(
                        s, "platform", "episode.orphan.remove", episode_id, upload=session_id, keys=removed
                    )
        if removed:
            log.warning(
                "removed episode %s from the object store: upload session %s published it but it was "
                "never recorded in the catalog (%d objects: %s)",
                episode_id,
                session_id,
                len(removed),
                ", ".join(removed),
            )
        return True
