"""The simulated Sawyer's embodiment: names, rates and cameras, without the simulator, so that
serving benchmarks and policies can describe it on machines that have no MuJoCo."""

from __future__ import annotations

from wamfleet.platform.contracts.embodiment import (
    ActionRepresentation,
    CameraSpec,
    EmbodimentSpec,
)

EMBODIMENT_NAME = "sawyer-metaworld"
SIM_FPS = 15.0
# Bundle camera name -> MuJoCo camera: an exterior view and the wrist view, as on real arms.
CAMERAS = {"exterior": "corner2", "wrist": "gripperPOV", "top": "topview"}
DEFAULT_CAMERAS = ("exterior", "wrist")
STATE_NAMES = (
    ["hand_x", "hand_y", "hand_z", "gripper"]
    + [f"obj{o}_{c}" for o in (0, 1) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
    + [f"prev_{n}" for n in ["hand_x", "hand_y", "hand_z", "gripper"]]
    + [f"prev_obj{o}_{c}" for o in (0, 1) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
    + ["goal_x", "goal_y", "goal_z"]
)
ACTION_NAMES = ["dx", "dy", "dz", "grip"]


def sawyer_embodiment(image_size: int = 96, cameras: tuple[str, ...] = DEFAULT_CAMERAS) -> EmbodimentSpec:
    return EmbodimentSpec(
        name=EMBODIMENT_NAME,
        version=1,
        cameras=[CameraSpec(name=c, height=image_size, width=image_size) for c in cameras],
        fps=SIM_FPS,
        state_names=STATE_NAMES,
        action_names=ACTION_NAMES,
        action_representation=ActionRepresentation.delta,
        description="Meta-World Sawyer: end-effector delta xyz + gripper; state is the 39-d observation.",
    )
