"""What a robot is: cameras, rates, and the meaning of its state and action vectors.

An embodiment spec travels with every episode (by reference) and every checkpoint (in full),
so a model can never be driven with vectors it was not trained on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wamfleet.platform.contracts.ids import SLUG_PATTERN
from wamfleet.platform.contracts.limits import INT4_MAX, Text

EMBODIMENT_SCHEMA_VERSION: Final = 1


class _Strict(BaseModel):
    # Finite floats only: NaN or infinity in a stored spec would make every later read of it fail.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CameraSpec(_Strict):
    """One RGB stream; `name` becomes `videos/<name>.mp4` in a bundle."""

    name: str = Field(pattern=SLUG_PATTERN)
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)

    @model_validator(mode="after")
    def _even(self) -> Self:
        # H.264 / yuv420p needs even dimensions; refusing here beats a codec error later.
        if self.height % 2 or self.width % 2:
            raise ValueError(f"camera {self.name!r}: height and width must be even")
        return self


class ActionRepresentation(StrEnum):
    absolute = "absolute"
    delta = "delta"


class FeatureStats(_Strict):
    """Per-dimension statistics used to normalise a state or action vector."""

    mean: list[float]
    std: list[float]
    q01: list[float]
    q99: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Self:
        lengths = {len(self.mean), len(self.std), len(self.q01), len(self.q99)}
        if len(lengths) != 1:
            raise ValueError("mean, std, q01 and q99 must have the same length")
        return self

    @property
    def dim(self) -> int:
        return len(self.mean)


class NormStats(_Strict):
    state: FeatureStats | None = None
    action: FeatureStats | None = None


class EmbodimentRef(_Strict):
    name: str = Field(pattern=SLUG_PATTERN)
    version: int = Field(ge=1, le=INT4_MAX)  # the catalog's Integer column


class EmbodimentSpec(_Strict):
    schema_version: Literal[1] = EMBODIMENT_SCHEMA_VERSION
    name: str = Field(pattern=SLUG_PATTERN)
    version: int = Field(default=1, ge=1, le=INT4_MAX)
    cameras: list[CameraSpec] = Field(min_length=1)
    fps: float = Field(gt=0, le=1000)
    state_names: list[Text] = Field(default_factory=list)  # empty for camera-only sources (human video)
    action_names: list[Text] = Field(default_factory=list)
    action_representation: ActionRepresentation = ActionRepresentation.absolute
    norm_stats: NormStats | None = None
    description: Text = ""

    @field_validator("state_names", "action_names")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        cams = [c.name for c in self.cameras]
        if len(set(cams)) != len(cams):
            raise ValueError("camera names must be unique")
        if self.norm_stats is not None:
            if self.norm_stats.state and self.norm_stats.state.dim != self.state_dim:
                raise ValueError(
                    f"norm_stats.state has {self.norm_stats.state.dim} dims, state_names {self.state_dim}"
                )
            if self.norm_stats.action and self.norm_stats.action.dim != self.action_dim:
                raise ValueError(
                    f"norm_stats.action has {self.norm_stats.action.dim} dims, action_names {self.action_dim}"
                )
        return self

    @property
    def ref(self) -> EmbodimentRef:
        return EmbodimentRef(name=self.name, version=self.version)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"embodiment {self.name!r} has no camera {name!r}")
