"""Moving episode bundles between a local directory and the object store.

The manifest is uploaded last and downloaded first: its presence in the store is what makes
an episode exist, so a reader never sees half an upload.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from wamfleet.platform.contracts.checksums import sha256_file
from wamfleet.platform.contracts.episode import (
    MANIFEST_FILE,
    EpisodeManifest,
    bundle_prefix,
)
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.storage.base import ObjectNotFound, ObjectStore, StorageError

EPISODES_PREFIX = "episodes/"


class BundleIntegrityError(StorageError):
    pass


def _parse_manifest(raw: bytes, where: str) -> EpisodeManifest:
    try:
        return EpisodeManifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleIntegrityError(f"{where}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise BundleIntegrityError(f"{where}: {describe_validation_error(exc)}") from None


def upload_bundle(store: ObjectStore, directory: Path) -> EpisodeManifest:
    """Uploads a finished bundle directory; files first, manifest last. Safe to repeat."""
    directory = Path(directory)
    raw = (directory / MANIFEST_FILE).read_bytes()
    manifest = _parse_manifest(raw, str(directory / MANIFEST_FILE))
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            raise BundleIntegrityError(f"{entry.path}: missing or not the size the manifest lists")
        store.put_file(manifest.prefix + entry.path, path)
    store.put_bytes(manifest.prefix + MANIFEST_FILE, raw)
    return manifest


def get_manifest(store: ObjectStore, robot_id: str, episode_id: uuid.UUID | str) -> EpisodeManifest:
    key = bundle_prefix(robot_id, episode_id) + MANIFEST_FILE
    return _parse_manifest(store.get_bytes(key), key)


def download_bundle(
    store: ObjectStore, robot_id: str, episode_id: uuid.UUID | str, dest: Path
) -> EpisodeManifest:
    """Downloads a committed bundle into `dest` and checks every file's size and sha256."""
    key = bundle_prefix(robot_id, episode_id) + MANIFEST_FILE
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        raise ObjectNotFound(key) from None
    manifest = _parse_manifest(raw, key)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        path = dest / entry.path
        store.get_file(manifest.prefix + entry.path, path)
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise BundleIntegrityError(f"{manifest.prefix}{entry.path}: does not match its manifest checksum")
    (dest / MANIFEST_FILE).write_bytes(raw)
    return manifest


def iter_manifests(store: ObjectStore, robot_id: str | None = None) -> Iterator[EpisodeManifest]:
    """Every committed episode in the store (optionally one robot's), in key order."""
    prefix = EPISODES_PREFIX + (f"{robot_id}/" if robot_id else "")
    for info in store.list(prefix):
        if info.key.endswith("/" + MANIFEST_FILE):
            yield _parse_manifest(store.get_bytes(info.key), info.key)
