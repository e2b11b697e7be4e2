"""Embodiment specs kept beside the episodes, so any reader of a bundle can resolve its ref."""

from __future__ import annotations

from pydantic import ValidationError

from wamfleet.platform.contracts.embodiment import EmbodimentRef, EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.storage.base import ObjectNotFound, ObjectStore, StorageError


def embodiment_key(ref: EmbodimentRef) -> str:
    return f"embodiments/{ref.name}/v{ref.version}.json"


def put_embodiment(store: ObjectStore, spec: EmbodimentSpec) -> None:
    """Stores a spec; a different spec under an existing name+version is refused (specs are immutable)."""
    existing = get_embodiment(store, spec.ref)
    if existing is not None and existing != spec:
        raise StorageError(
            f"embodiment {spec.name!r} v{spec.version} already exists with a different spec; bump its version"
        )
    if existing is None:
        store.put_bytes(embodiment_key(spec.ref), spec.model_dump_json(indent=2).encode())


def get_embodiment(store: ObjectStore, ref: EmbodimentRef) -> EmbodimentSpec | None:
    key = embodiment_key(ref)
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        return None
    try:
        return EmbodimentSpec.model_validate_json(raw)
    except ValidationError as exc:
        raise StorageError(f"{key}: {describe_validation_error(exc)}") from None


def embodiment_for(store: ObjectStore, manifest: EpisodeManifest) -> EmbodimentSpec:
    """The stored spec of an episode's embodiment, or one derived from its manifest."""
    spec = get_embodiment(store, manifest.embodiment)
    if spec is not None:
        return spec
    return EmbodimentSpec(
        name=manifest.embodiment.name,
        version=manifest.embodiment.version,
        cameras=manifest.cameras,
        fps=manifest.fps,
        state_names=manifest.state_names,
        action_names=manifest.action_names,
    )
