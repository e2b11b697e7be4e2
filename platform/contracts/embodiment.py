"""What a robot is: cameras, rates, and the meaning of its state and action vectors.

An embodiment spec travels with every episode (by reference) and every checkpoint (in full),
so a model can never be driven with vectors it was not trained on.

It also says how a robot's client sends an observation (`observation`: which client key fills
which camera, which key fills which slice of the state) and what each slice of an action means
(`action_layout`). Without them, the defaults are the canonical keys: `images` holding every
camera stacked in camera order, and `state` holding the whole state vector.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, Self

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
    velocity = "velocity"  # a rate (e.g. DROID's joint velocities); zeros hold still


# The keys a policy request already uses for itself; a mapping may not claim them.
RESERVED_KEYS: Final = frozenset(
    {"prompt", "instruction", "session_id", "session_token", "endpoint", "reset", "frame_index"}
)
# Every camera stacked, in camera order: [views, H, W, 3] or [T, views, H, W, 3].
CANONICAL_IMAGES: Final = "images"
CANONICAL_STATE: Final = "state"  # the whole state vector
ClientKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class MissingImage(StrEnum):
    """What the server does when a client does not send an image key."""

    refuse = "refuse"  # the request is refused with an error naming the key
    repeat = "repeat"  # the images of camera `repeat_from` (sent in the same request) stand in
    blank = "blank"  # black frames of the request's size stand in


class ImageSource(_Strict):
    """A client key carrying camera images (uint8 RGB).

    One camera (`stacked` false): `[H, W, 3]`, or `[T, H, W, 3]` for T frames, oldest first.
    Several (`stacked` true): `[views, H, W, 3]` or `[T, views, H, W, 3]`, one view per camera
    in the order of `cameras`. All images of one request share T, H and W.
    """

    key: ClientKey
    cameras: list[str] = Field(min_length=1)
    stacked: bool = False
    when_missing: MissingImage = MissingImage.refuse
    repeat_from: str | None = None  # the camera whose images stand in, with when_missing=repeat

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if not self.stacked and len(self.cameras) != 1:
            raise ValueError(f"{self.key!r}: an unstacked key carries exactly one camera")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"{self.key!r}: a camera is listed twice")
        if self.when_missing is not MissingImage.refuse and self.stacked:
            raise ValueError(f"{self.key!r}: only a single-camera key may be optional")
        if (self.when_missing is MissingImage.repeat) != (self.repeat_from is not None):
            raise ValueError(f"{self.key!r}: repeat_from goes with when_missing='repeat', and only with it")
        return self


class StateSource(_Strict):
    """A client key carrying the state values `[start, stop)` (a list, an array, or one number)."""

    key: ClientKey
    start: int = Field(ge=0, le=4096)
    stop: int = Field(gt=0, le=4096)

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.stop <= self.start:
            raise ValueError(f"{self.key!r}: stop ({self.stop}) must be greater than start ({self.start})")
        return self

    @property
    def size(self) -> int:
        return self.stop - self.start


class ObservationMapping(_Strict):
    """How a client's observation keys fill the embodiment's cameras and state vector."""

    images: list[ImageSource] = Field(min_length=1)
    state: list[StateSource] = Field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.images] + [s.key for s in self.state]

    def check(self, cameras: list[str], state_dim: int) -> None:
        """Every camera filled exactly once and the state exactly covered: ValueError otherwise."""
        keys = self.keys
        duplicate = sorted({k for k in keys if keys.count(k) > 1})
        if duplicate:
            raise ValueError(f"observation: keys {duplicate} are used more than once")
        reserved = sorted(set(keys) & RESERVED_KEYS)
        if reserved:
            raise ValueError(f"observation: keys {reserved} are reserved for the request itself")
        filled: dict[str, ImageSource] = {}
        for source in self.images:
            for camera in source.cameras:
                if camera not in cameras:
                    raise ValueError(
                        f"observation: {source.key!r} fills camera {camera!r}, which is not one of {cameras}"
                    )
                if camera in filled:
                    raise ValueError(
                        f"observation: camera {camera!r} is filled by both "
                        f"{filled[camera].key!r} and {source.key!r}"
                    )
                filled[camera] = source
        unfilled = [c for c in cameras if c not in filled]
        if unfilled:
            raise ValueError(f"observation: no key fills cameras {unfilled}")
        for source in self.images:
            if source.repeat_from is None:
                continue
            other = filled.get(source.repeat_from)
            if other is None:
                raise ValueError(f"observation: {source.key!r} repeats unknown camera {source.repeat_from!r}")
            if other is source or other.when_missing is not MissingImage.refuse:
                raise ValueError(
                    f"observation: {source.key!r} must repeat a camera whose key is required, "
                    f"not {source.repeat_from!r}"
                )
        _check_slices("observation.state", [(s.key, s.start, s.stop) for s in self.state], state_dim)


class ActionGroup(_Strict):
    """Actions `[start, stop)` of each step: what they are and how they act."""

    name: str = Field(pattern=SLUG_PATTERN)
    start: int = Field(ge=0, le=4096)
    stop: int = Field(gt=0, le=4096)
    representation: ActionRepresentation = ActionRepresentation.absolute
    description: Text = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.stop <= self.start:
            raise ValueError(f"{self.name!r}: stop ({self.stop}) must be greater than start ({self.start})")
        return self


def _check_slices(where: str, slices: list[tuple[str, int, int]], dim: int) -> None:
    """Slices within [0, dim), not overlapping, together covering every index."""
    covered = 0
    for name, start, stop in sorted(slices, key=lambda s: s[1]):
        if stop > dim:
            raise ValueError(f"{where}: {name!r} ends at {stop}, beyond the {dim} values")
        if start < covered:
            raise ValueError(f"{where}: {name!r} overlaps the slice before it (starts at {start})")
        if start > covered:
            raise ValueError(f"{where}: values [{covered}, {start}) are filled by no slice")
        covered = stop
    if covered != dim:
        raise ValueError(f"{where}: values [{covered}, {dim}) are filled by no slice")


def default_observation(cameras: list[str], state_dim: int) -> ObservationMapping:
    """Today's keys: `images` (every camera stacked, in this order) and `state` (all of it)."""
    state = [StateSource(key=CANONICAL_STATE, start=0, stop=state_dim)] if state_dim else []
    return ObservationMapping(
        images=[ImageSource(key=CANONICAL_IMAGES, cameras=list(cameras), stacked=True)], state=state
    )


def default_action_layout(
    action_dim: int, representation: ActionRepresentation = ActionRepresentation.absolute
) -> list[ActionGroup]:
    """One group of every action."""
    if not action_dim:
        return []
    return [ActionGroup(name="action", start=0, stop=action_dim, representation=representation)]


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
    # How clients send observations and what each action slice is; None = the defaults
    # (`observation_mapping`, `actions`): the keys `images` and `state`, one action group.
    observation: ObservationMapping | None = None
    action_layout: list[ActionGroup] | None = None

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
        if self.observation is not None:
            self.observation.check(cams, self.state_dim)
        if self.action_layout is not None:
            names = [g.name for g in self.action_layout]
            if len(set(names)) != len(names):
                raise ValueError("action_layout: group names must be unique")
            groups = [(g.name, g.start, g.stop) for g in self.action_layout]
            _check_slices("action_layout", groups, self.action_dim)
        return self

    @property
    def observation_mapping(self) -> ObservationMapping:
        """The declared mapping, or the default (`images` stacked in camera order, `state`)."""
        if self.observation is not None:
            return self.observation
        return default_observation([c.name for c in self.cameras], self.state_dim)

    @property
    def actions(self) -> list[ActionGroup]:
        """The declared action layout, or one group of every action."""
        if self.action_layout is not None:
            return self.action_layout
        return default_action_layout(self.action_dim, self.action_representation)

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
