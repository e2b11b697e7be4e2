from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import WriteEpisode
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.platform.contracts import EmbodimentSpec
from wamfleet.platform.storage import LocalObjectStore, ObjectNotFound, ObjectStore, StorageError
from wamfleet.platform.storage.bundles import (
    BundleIntegrityError,
    download_bundle,
    get_manifest,
    iter_manifests,
    upload_bundle,
)
from wamfleet.platform.storage.embodiments import embodiment_for, get_embodiment, put_embodiment


def test_upload_then_download_is_byte_identical(
    object_store: ObjectStore, write_episode: WriteEpisode, tmp_path: Path
) -> None:
    directory, manifest = write_episode(frames=12)
    assert upload_bundle(object_store, directory) == manifest
    assert get_manifest(object_store, "robot-1", manifest.episode_id) == manifest
    out = tmp_path / "downloaded"
    download_bundle(object_store, "robot-1", manifest.episode_id, out)
    for entry in manifest.files:
        assert (out / entry.path).read_bytes() == (directory / entry.path).read_bytes()
    with EpisodeReader(out) as reader:
        assert reader.num_frames == 12
    upload_bundle(object_store, directory)  # repeating an upload is harmless
    assert [m.episode_id for m in iter_manifests(object_store)] == [manifest.episode_id]


def test_manifest_is_uploaded_last(tmp_path: Path, write_episode: WriteEpisode) -> None:
    order: list[str] = []

    class Recording(LocalObjectStore):
        def put_file(self, key: str, path: Path):
            order.append(key)
            return super().put_file(key, path)

        def put_bytes(self, key: str, data: bytes):
            order.append(key)
            return super().put_bytes(key, data)

    directory, manifest = write_episode(frames=3)
    upload_bundle(Recording(tmp_path / "store"), directory)
    assert order[-1] == manifest.prefix + "manifest.json"
    assert len(order) == 4


def test_episode_without_manifest_is_invisible(
    object_store: ObjectStore, write_episode: WriteEpisode
) -> None:
    directory, manifest = write_episode(frames=3)
    for entry in manifest.files:  # an upload that died before the commit marker
        object_store.put_file(manifest.prefix + entry.path, directory / entry.path)
    assert list(iter_manifests(object_store)) == []
    with pytest.raises(ObjectNotFound):
        download_bundle(object_store, "robot-1", manifest.episode_id, directory.parent / "x")


def test_tampered_object_is_detected_on_download(
    object_store: ObjectStore, write_episode: WriteEpisode, tmp_path: Path
) -> None:
    directory, manifest = write_episode(frames=5)
    upload_bundle(object_store, directory)
    object_store.put_bytes(manifest.prefix + "videos/front.mp4", b"not a video")
    with pytest.raises(BundleIntegrityError, match=r"videos/front\.mp4"):
        download_bundle(object_store, "robot-1", manifest.episode_id, tmp_path / "out")


def test_iter_manifests_per_robot(object_store: ObjectStore, write_episode: WriteEpisode) -> None:
    for robot in ("robot-1", "robot-2", "robot-2"):
        upload_bundle(object_store, write_episode(frames=2, robot_id=robot)[0])
    assert len(list(iter_manifests(object_store, "robot-2"))) == 2
    assert len(list(iter_manifests(object_store))) == 3


def test_embodiment_specs_are_immutable(object_store: ObjectStore, embodiment: EmbodimentSpec) -> None:
    put_embodiment(object_store, embodiment)
    put_embodiment(object_store, embodiment)
    assert get_embodiment(object_store, embodiment.ref) == embodiment
    changed = embodiment.model_copy(update={"fps": 30.0})
    with pytest.raises(StorageError, match="bump its version"):
        put_embodiment(object_store, changed)


def test_embodiment_for_falls_back_to_the_manifest(
    object_store: ObjectStore, write_episode: WriteEpisode, embodiment: EmbodimentSpec
) -> None:
    _, manifest = write_episode(frames=2)
    derived = embodiment_for(object_store, manifest)
    assert derived.cameras == embodiment.cameras and derived.state_names == embodiment.state_names
    put_embodiment(object_store, embodiment)
    assert embodiment_for(object_store, manifest) == embodiment
    assert uuid.UUID(str(manifest.episode_id)).version == 7
