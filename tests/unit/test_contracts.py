from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from wamfleet.platform.contracts import (
    CameraSpec,
    EmbodimentSpec,
    EpisodeManifest,
    describe_validation_error,
    is_uuid7,
    new_episode_id,
)
from wamfleet.platform.contracts.ids import uuid7_time_ms


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "episode_id": str(new_episode_id()),
        "robot_id": "robot-1",
        "embodiment": {"name": "arm", "version": 1},
        "task": "open the drawer",
        "fps": 15,
        "num_frames": 10,
        "started_at": datetime.now(UTC).isoformat(),
        "cameras": [{"name": "front", "height": 96, "width": 96}],
        "state_names": ["j0"],
        "action_names": ["a0"],
        "has_actions": True,
        "files": [
            {"path": "data.parquet", "size": 10, "sha256": "a" * 64},
            {"path": "videos/front.mp4", "size": 20, "sha256": "b" * 64},
        ],
    }
    base.update(overrides)
    return base


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        EpisodeManifest.model_validate(data)
    return describe_validation_error(info.value, "manifest")


def test_valid_manifest_round_trips_through_json() -> None:
    manifest = EpisodeManifest.model_validate(manifest_dict())
    again = EpisodeManifest.model_validate(json.loads(manifest.model_dump_json()))
    assert again == manifest
    assert manifest.prefix == f"episodes/robot-1/{manifest.episode_id}/"
    assert manifest.total_bytes == 30


def test_uuid7_ids_are_version_7_and_time_ordered() -> None:
    a = new_episode_id(1_700_000_000_000)
    b = new_episode_id(1_700_000_000_001)
    assert is_uuid7(a) and is_uuid7(b)
    assert a < b
    assert uuid7_time_ms(a) == 1_700_000_000_000
    assert not is_uuid7(uuid.uuid4())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"episode_id": str(uuid.uuid4())}, "manifest.episode_id"),
        ({"robot_id": "../evil"}, "manifest.robot_id"),
        ({"robot_id": "Robot One"}, "manifest.robot_id"),
        ({"task": "   "}, "manifest.task"),
        ({"fps": 0}, "manifest.fps"),
        ({"num_frames": 0}, "manifest.num_frames"),
        ({"schema_version": 2}, "manifest.schema_version"),
        ({"started_at": "2026-01-01T00:00:00"}, "manifest.started_at"),
        ({"outcome": {"progress": 1.5}}, "manifest.outcome.progress"),
        ({"cameras": [{"name": "front", "height": 95, "width": 96}]}, "manifest.cameras[0]"),
        ({"unexpected": 1}, "manifest.unexpected"),
        ({"tags": {"Bad Key": "x"}}, "manifest.tags"),
    ],
)
def test_malformed_manifest_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    assert error_of(manifest_dict(**overrides)).startswith(field)


def test_missing_field_is_named() -> None:
    data = manifest_dict()
    del data["task"]
    assert "manifest.task: Field required" in error_of(data)


def test_bad_checksum_is_named() -> None:
    data = manifest_dict()
    data["files"][1]["sha256"] = "XYZ"
    assert error_of(data).startswith("manifest.files[1].sha256")


def test_files_must_be_exactly_the_bundle_files() -> None:
    data = manifest_dict()
    data["files"][1]["path"] = "../../etc/passwd"
    message = error_of(data)
    assert "missing ['videos/front.mp4']" in message
    assert "unexpected ['../../etc/passwd']" in message


def test_actions_declared_but_unnamed_is_refused() -> None:
    assert "action_names is empty" in error_of(manifest_dict(action_names=[]))


def test_video_only_manifest_is_valid_without_actions() -> None:
    manifest = EpisodeManifest.model_validate(
        manifest_dict(has_actions=False, action_names=[], state_names=[], source="human_video")
    )
    assert not manifest.has_actions


def test_autonomous_episode_needs_policy_version() -> None:
    assert "policy_version" in error_of(manifest_dict(source="autonomous"))


def test_embodiment_validation() -> None:
    cam = CameraSpec(name="front", height=64, width=64)
    with pytest.raises(ValidationError, match="camera names must be unique"):
        EmbodimentSpec(name="arm", cameras=[cam, cam], fps=10, state_names=["a"])
    with pytest.raises(ValidationError, match="feature names must be unique"):
        EmbodimentSpec(name="arm", cameras=[cam], fps=10, state_names=["a", "a"])
    with pytest.raises(ValidationError) as info:
        EmbodimentSpec.model_validate(
            {
                "name": "arm",
                "cameras": [cam],
                "fps": 10,
                "state_names": ["a", "b"],
                "norm_stats": {"state": {"mean": [0], "std": [1], "q01": [0], "q99": [1]}},
            }
        )
    assert "norm_stats.state has 1 dims" in str(info.value)
    spec = EmbodimentSpec(name="arm", cameras=[cam], fps=10, state_names=["a"], action_names=["x", "y"])
    assert (spec.state_dim, spec.action_dim) == (1, 2)
    assert spec.camera("front") == cam
    with pytest.raises(KeyError, match="no camera 'side'"):
        spec.camera("side")
