"""Data contracts shared by robots, the platform and pipelines (pydantic only, no I/O)."""

from wamfleet.platform.contracts.embodiment import (
    ActionRepresentation,
    CameraSpec,
    EmbodimentRef,
    EmbodimentSpec,
    FeatureStats,
)
from wamfleet.platform.contracts.episode import (
    MANIFEST_SCHEMA_VERSION,
    EpisodeManifest,
    FileEntry,
    Outcome,
)
from wamfleet.platform.contracts.errors import describe_validation_error
from wamfleet.platform.contracts.ids import is_uuid7, new_episode_id

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "ActionRepresentation",
    "CameraSpec",
    "EmbodimentRef",
    "EmbodimentSpec",
    "EpisodeManifest",
    "FeatureStats",
    "FileEntry",
    "Outcome",
    "describe_validation_error",
    "is_uuid7",
    "new_episode_id",
]
