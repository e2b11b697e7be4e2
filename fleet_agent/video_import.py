"""Plain videos (a human demonstration, another robot's camera) as video-only episodes.

The video is resampled to the embodiment's frame rate and center-cropped and scaled to its
camera, so the result is an ordinary bundle the platform and pipelines treat like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from wamfleet.fleet_agent.spool import Spool
from wamfleet.platform.contracts.embodiment import CameraSpec, EmbodimentSpec
from wamfleet.platform.contracts.episode import EpisodeManifest, EpisodeSource

HUMAN_EMBODIMENT = "human"


def human_video_embodiment(size: int = 224, fps: float = 15.0) -> EmbodimentSpec:
    """One camera, no state, no actions: what a plain video can tell a model."""
    return EmbodimentSpec(
        name=HUMAN_EMBODIMENT,
        cameras=[CameraSpec(name="main", height=size, width=size)],
        fps=fps,
        state_names=[],
        action_names=[],
        description="Video-only sources: human demonstrations or footage from other robots.",
    )


def _fit(image: NDArray[np.uint8], camera: CameraSpec) -> NDArray[np.uint8]:
    """Center-crops to the camera's aspect ratio, then scales to its size."""
    h, w = image.shape[:2]
    target = camera.width / camera.height
    if w / h > target:
        new_w = round(h * target)
        x0 = (w - new_w) // 2
        image = image[:, x0 : x0 + new_w]
    else:
        new_h = round(w / target)
        y0 = (h - new_h) // 2
        image = image[y0 : y0 + new_h]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return np.asarray(frame.reformat(width=camera.width, height=camera.height).to_ndarray(format="rgb24"))


def _resampled(path: Path, fps: float) -> Iterator[NDArray[np.uint8]]:
    """Frames at t = k / fps, each the latest source frame at or before t."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path.name}: has no video stream")
        stream = container.streams.video[0]
        k = 0
        last: NDArray[np.uint8] | None = None
        start: float | None = None
        for frame in container.decode(stream):
            t = float(frame.time or 0.0)
            start = t if start is None else start
            image = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
            while last is not None and start + k / fps < t:
                yield last
                k += 1
            last = image
        if last is not None:
            yield last


def import_video(
    path: Path,
    spool: Spool,
    *,
    robot_id: str,
    embodiment: EmbodimentSpec,
    task: str,
    tags: dict[str, str] | None = None,
) -> EpisodeManifest:
    """Writes the video as a video-only episode into the spool's ready queue."""
    if len(embodiment.cameras) != 1:
        raise ValueError(
            f"embodiment: {embodiment.name!r} has {len(embodiment.cameras)} cameras; a video has one"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    camera = embodiment.cameras[0]
    writer = spool.start_recording(
        robot_id=robot_id,
        embodiment=embodiment,
        task=task,
        video_only=True,
        source=EpisodeSource.human_video,
        tags={"source-file": path.name[:200], **(tags or {})},
    )
    state = np.zeros(embodiment.state_dim, dtype=np.float32)
    with writer:
        try:
            for image in _resampled(path, embodiment.fps):
                writer.add_frame({camera.name: _fit(image, camera)}, state)
        except av.FFmpegError as exc:
            raise ValueError(f"{path.name}: cannot decode ({exc})") from None
        if writer.num_frames == 0:
            raise ValueError(f"{path.name}: no frames decoded")
        return spool.finish(writer)
