"""Episode bundle I/O speed: encode and decode rates, real-time ratio, bytes per frame.

Frames come from a Meta-World robot (3 cameras at 224x224, rendered before timing starts)
so the codec sees realistic content. The process is pinned to one core.

    python benchmarks/episode_io.py [--frames 300] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.fleet_agent.sim.fleet import layout_seed
from wamfleet.fleet_agent.sim.metaworld_robot import MetaWorldRobot

CAMERAS = ("exterior", "wrist", "top")
TARGET_REALTIME = 10.0


def render_frames(frames: int, size: int) -> tuple[MetaWorldRobot, list[dict[str, np.ndarray]], np.ndarray]:
    robot = MetaWorldRobot("pick-place-v3", image_size=size, cameras=CAMERAS)
    rng = np.random.default_rng(0)
    images, states = [], []
    step = robot.reset(layout_seed(0, "bench", 0))
    for i in range(frames):
        images.append(step.images)
        states.append(step.state)
        step = robot.step(robot.expert_action(rng))
        if i % 150 == 149:
            step = robot.reset(layout_seed(0, "bench", i))
    return robot, images, np.stack(states)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    robot, images, states = render_frames(args.frames, args.size)
    spec = robot.embodiment
    actions = np.zeros((args.frames, spec.action_dim), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "episode"
        start = time.perf_counter()
        writer = EpisodeWriter(directory, robot_id="bench", embodiment=spec, task="pick and place", threads=1)
        for i in range(args.frames):
            writer.add_frame(images[i], states[i], actions[i])
        manifest = writer.close()
        encode_s = time.perf_counter() - start

        start = time.perf_counter()
        with EpisodeReader(directory) as reader:
            decoded = sum(len(f) for f in reader.iter_frames())
        decode_s = time.perf_counter() - start
        with EpisodeReader(directory) as reader:
            start = time.perf_counter()
            probes = 20
            for k in range(probes):
                index = (k * 37) % args.frames
                reader.frame(index)
            random_ms = (time.perf_counter() - start) / probes * 1000

    robot.close()
    n_cams = len(CAMERAS)
    video_bytes = sum(f.size for f in manifest.files if f.path.startswith("videos/"))
    parquet_bytes = manifest.file("data.parquet").size
    camera_frames = args.frames * n_cams
    raw_bytes = args.size * args.size * 3
    realtime = (args.frames / encode_s) / spec.fps
    verdict = "met" if realtime >= TARGET_REALTIME else "MISSED"
    size = f"{args.size}x{args.size}"
    print(f"episode I/O: {n_cams} cameras at {size}, {spec.fps:.0f} fps, one core, {args.frames} frames")
    per_s = args.frames / encode_s
    print(f"encode: {camera_frames / encode_s:.1f} camera-frames/s ({per_s:.1f} episode-frames/s)")
    print(f"encode vs real time: {realtime:.1f}x (target >= {TARGET_REALTIME:.0f}x: {verdict})")
    print(f"decode: {decoded / decode_s:.1f} camera-frames/s (sequential, including checksum verification)")
    print(f"random access: {random_ms:.1f} ms per frame index (all {n_cams} cameras)")
    ratio = raw_bytes * camera_frames / video_bytes
    print(
        f"bytes per camera-frame: {video_bytes / camera_frames:.0f} (raw {raw_bytes}, {ratio:.0f}x smaller)"
    )
    print(f"parquet bytes per frame: {parquet_bytes / args.frames:.0f}")


if __name__ == "__main__":
    main()
