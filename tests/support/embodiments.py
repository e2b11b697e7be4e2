"""The small arm the ingest tests, the chaos test and the soak record: two small cameras and a
few joints, so an episode is tens of KB."""

from __future__ import annotations

from wamfleet.platform.contracts import CameraSpec, EmbodimentSpec


def small_arm(name: str) -> EmbodimentSpec:
    return EmbodimentSpec(
        name=name,
        cameras=[
            CameraSpec(name="front", height=32, width=48),
            CameraSpec(name="wrist", height=32, width=32),
        ],
        fps=15,
        state_names=["j0", "j1", "j2"],
        action_names=["a0", "a1"],
    )
