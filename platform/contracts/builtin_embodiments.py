"""Embodiments that ship with wamfleet, for robots whose clients already exist.

`droid`: the DROID platform (Franka Panda, Robotiq gripper, two exterior ZED cameras and a wrist
camera) as openpi's and DreamZero's DROID clients drive it. openpi's client
(examples/droid/main.py) sends flat keys: `observation/exterior_image_1_left` and
`observation/wrist_image_left` (224x224 uint8, resized with padding), `observation/joint_position`
(7), `observation/gripper_position` (1) and `prompt`, and executes the first steps of
`actions` (joint velocity (7) + gripper position (1)). DreamZero's DROID setup uses both exterior
cameras and the wrist camera (180x320) with the same state, at 15 Hz. openpi's client sends one
exterior camera only, so the second one is optional: when it is not sent, the first exterior
camera's images stand in for it (as if both cameras saw the same view), never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from wamfleet.platform.contracts.embodiment import (
    ActionGroup,
    ActionRepresentation,
    CameraSpec,
    EmbodimentSpec,
    ImageSource,
    MissingImage,
    ObservationMapping,
    StateSource,
)

DROID: Final = "droid"
DROID_FPS: Final = 15.0
DROID_IMAGE_SIZE: Final = (180, 320)  # DreamZero's DROID views (H, W); any size is accepted and resized
DROID_CAMERAS: Final = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
DROID_JOINTS: Final = 7


def droid_embodiment() -> EmbodimentSpec:
    """DROID: 3 cameras, 7 joint positions + gripper position, 8-dim actions (joint velocity +
    gripper position) at 15 Hz, observed through openpi's DROID keys."""
    h, w = DROID_IMAGE_SIZE
    ext1, ext2, wrist = DROID_CAMERAS
    return EmbodimentSpec(
        name=DROID,
        version=1,
        cameras=[CameraSpec(name=c, height=h, width=w) for c in DROID_CAMERAS],
        fps=DROID_FPS,
        state_names=[f"joint_{i}_position" for i in range(DROID_JOINTS)] + ["gripper_position"],
        action_names=[f"joint_{i}_velocity" for i in range(DROID_JOINTS)] + ["gripper_position"],
        action_representation=ActionRepresentation.velocity,
        observation=ObservationMapping(
            images=[
                ImageSource(key=f"observation/{ext1}", cameras=[ext1]),
                ImageSource(
                    key=f"observation/{ext2}",
                    cameras=[ext2],
                    when_missing=MissingImage.repeat,
                    repeat_from=ext1,
                ),
                ImageSource(key=f"observation/{wrist}", cameras=[wrist]),
            ],
            state=[
                StateSource(key="observation/joint_position", start=0, stop=DROID_JOINTS),
                StateSource(key="observation/gripper_position", start=DROID_JOINTS, stop=DROID_JOINTS + 1),
            ],
        ),
        action_layout=[
            ActionGroup(
                name="joint_velocity",
                start=0,
                stop=DROID_JOINTS,
                representation=ActionRepresentation.velocity,
                description="joint velocities, as DROID's controller takes them",
            ),
            ActionGroup(
                name="gripper_position",
                start=DROID_JOINTS,
                stop=DROID_JOINTS + 1,
                representation=ActionRepresentation.absolute,
                description="gripper position in [0, 1] (clients close above 0.5)",
            ),
        ],
        description="DROID (Franka Panda + Robotiq): openpi / DreamZero DROID clients' keys; "
        "joint velocity + gripper position actions at 15 Hz.",
    )


BUILTIN_EMBODIMENTS: Final[dict[str, Callable[[], EmbodimentSpec]]] = {DROID: droid_embodiment}


def builtin_embodiment(name: str) -> EmbodimentSpec:
    """A shipped embodiment by name; ValueError naming the known ones otherwise."""
    if name not in BUILTIN_EMBODIMENTS:
        raise ValueError(f"embodiment: no built-in {name!r}; built in: {sorted(BUILTIN_EMBODIMENTS)}")
    return BUILTIN_EMBODIMENTS[name]()
