from __future__ import annotations

import json
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError

from wamfleet.platform.contracts import (
    CameraSpec,
    EmbodimentSpec,
    EpisodeManifest,
    describe_validation_error,
    is_uuid7,
    new_episode_id,
)
from wamfleet.platform.contracts.ids import uuid7_time_ms
from wamfleet.platform.contracts.ingest import RobotRegistration, UploadRequest
from wamfleet.platform.contracts.limits import INT8_MAX
from wamfleet.platform.contracts.retrain import RetrainRequest
from wamfleet.platform.contracts.rollout import StartRollout


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


# Bounds: everything a request carries must fit the catalog column it lands in ---------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_frames": 2**31}, "manifest.num_frames"),  # Integer: int4 on PostgreSQL
        ({"num_frames": 2**63}, "manifest.num_frames"),
        ({"outcome": {"interventions": 2**31}}, "manifest.outcome.interventions"),
        ({"embodiment": {"name": "arm", "version": 2**31}}, "manifest.embodiment.version"),
        ({"embodiment": {"name": "arm", "version": 2**63}}, "manifest.embodiment.version"),
        ({"fps": float("nan")}, "manifest.fps"),
        ({"fps": float("inf")}, "manifest.fps"),
        ({"outcome": {"progress": float("nan")}}, "manifest.outcome.progress"),
        ({"tags": {"shift\n": "night"}}, "manifest.tags"),  # `$` in re.match lets "\n" through
        ({"tags": {"shift": "night\x00"}}, "manifest.tags"),
        ({"task": "open\x00the drawer"}, "manifest.task"),  # PostgreSQL text holds no NUL
        ({"policy_version": "v1\x00"}, "manifest.policy_version"),
        ({"started_at": "0001-01-01T00:00:00+01:00"}, "manifest.started_at"),  # not in UTC's range
        (  # it would end after year 9999
            {"started_at": "9999-12-31T23:59:00+00:00", "num_frames": 1500},
            "manifest: Value error, started_at",
        ),
    ],
)
def test_values_the_catalog_cannot_store_are_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    assert error_of(manifest_dict(**overrides)).startswith(field)


def test_file_sizes_fit_the_catalogs_bigint() -> None:
    data = manifest_dict()
    data["files"][0]["size"] = 2**63
    assert error_of(data).startswith("manifest.files[0].size")
    data["files"][0]["size"] = 2**63 - 1
    data["files"][1]["size"] = 1
    assert "more than the catalog holds" in error_of(data)


def test_a_checksum_or_slug_with_a_trailing_newline_is_refused() -> None:
    from wamfleet.platform.contracts.ids import is_slug

    data = manifest_dict()
    data["files"][1]["sha256"] = "b" * 64 + "\n"
    assert error_of(data).startswith("manifest.files[1].sha256")
    assert is_slug("robot-1") and not is_slug("robot-1\n")


def test_largest_storable_values_are_accepted() -> None:
    manifest = EpisodeManifest.model_validate(
        manifest_dict(
            num_frames=2**31 - 1,
            embodiment={"name": "arm", "version": 2**31 - 1},
            outcome={"interventions": 2**31 - 1, "progress": 1.0},
            started_at="2000-01-01T00:00:00-12:00",
        )
    )
    assert manifest.num_frames == 2**31 - 1


def _numbers(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[tuple[str, Any, Any]]:
    """(model.field, its FieldInfo, its type) of every int and float field reachable from `model`."""
    if model in seen:
        return
    seen.add(model)
    for name, info in model.model_fields.items():
        stack = [info.annotation]
        while stack:
            tp = stack.pop()
            args = typing.get_args(tp)
            if typing.get_origin(tp) is typing.Annotated:
                stack.append(args[0])
            elif args:
                stack.extend(args)
            elif isinstance(tp, type) and issubclass(tp, BaseModel):
                yield from _numbers(tp, seen)
            elif tp in (int, float):
                yield f"{model.__name__}.{name}", info, tp


@pytest.mark.parametrize(
    "body", [EpisodeManifest, UploadRequest, EmbodimentSpec, RobotRegistration, RetrainRequest, StartRollout]
)
def test_every_number_a_request_carries_is_bounded_and_finite(body: type[BaseModel]) -> None:
    """Keeps new fields honest: an int without an upper bound, or a float that may be NaN or
    infinite, would pass the API and fail later in the catalog or when read back."""
    unbounded = []
    seen: set[type[BaseModel]] = set()
    for where, info, tp in _numbers(body, seen):
        if tp is int:
            upper = [m for m in info.metadata if isinstance(m, annotated_types.Le | annotated_types.Lt)]
            if not upper or max(getattr(m, "le", getattr(m, "lt", 0)) for m in upper) > INT8_MAX:
                unbounded.append(f"{where}: no upper bound within int8")
    for model in seen:
        floats = any(tp is float for _, _, tp in _numbers(model, set()))
        if floats and model.model_config.get("allow_inf_nan", True):
            unbounded.append(f"{model.__name__}: allows NaN and infinity")
    assert not unbounded, unbounded
