"""Writes tests/fixtures/lerobot_written/ with LeRobot's own writer, so tests can check our reader
and our exports against what LeRobot itself produces, without LeRobot installed.

The committed fixture was made with lerobot 0.6.1 (which needs Python >= 3.12) in a throwaway
virtual environment, never the project's own:

    python3.12 -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install -r scripts/make_lerobot_fixture.requirements.txt
    /tmp/lerobot-venv/bin/python scripts/make_lerobot_fixture.py --force

The requirements file pins what lerobot 0.6.1 resolved then (torch 2.11.0 and torchvision 0.26.0,
PyPI's CUDA builds on x86_64, ~5 GB; av 15.1.0, pyarrow 26.0.1, pandas 2.3.3, numpy 2.2.6,
datasets 4.8.5). Videos use LeRobot's default encoder: libsvtav1, GOP 2, CRF 30. A warning that
torchcodec cannot load its FFmpeg libraries is harmless: LeRobot falls back to PyAV.
Regenerating reproduces the committed files (meta/stats.json's key order aside, which LeRobot
takes from a set).

The frames, states and actions are pure functions of (episode, frame), defined here with numpy
alone, so the tests import this file (without running `main`) to know what the fixture holds.

`--check-export DIR` opens a dataset that wamfleet exported with LeRobot's reader and normalises
a frame with LeRobot's own normaliser in every mode; run it with the same interpreter.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lerobot_written"
REPO_ID = "wamfleet/lerobot-written"
ROBOT_TYPE = "so101_follower"
FPS = 15
HEIGHT, WIDTH = 32, 32
CAMERAS = ("front", "wrist")
JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "gripper.pos"]
EPISODES = ((10, "pick up the red cube"), (12, "open the drawer"))


def features() -> dict[str, dict[str, Any]]:
    """The same feature names as a wamfleet export of an embodiment with cameras front and wrist."""
    feats: dict[str, dict[str, Any]] = {
        f"observation.images.{cam}": {
            "dtype": "video",
            "shape": (HEIGHT, WIDTH, 3),
            "names": ["height", "width", "channels"],
        }
        for cam in CAMERAS
    }
    feats["observation.state"] = {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS}
    feats["action"] = {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS}
    feats["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    feats["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    feats["intervention"] = {"dtype": "bool", "shape": (1,), "names": None}
    return feats


def image(episode: int, frame: int, camera: int) -> NDArray[np.uint8]:
    """A smooth picture, distinct per (episode, frame, camera), friendly to a lossy codec."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    phase = frame * 0.3 + camera + episode * 0.7
    base = 128 + 90 * np.sin(xx / 7.0 + phase) * np.cos(yy / 9.0 - phase / 2)
    img = np.stack([base, 255 - base, np.full_like(base, 40 + 10 * frame + 50 * camera)], axis=-1)
    return np.asarray(img.round().clip(0, 255), dtype=np.uint8)


def state(episode: int, frame: int) -> NDArray[np.float32]:
    return np.asarray([episode * 10 + frame * 0.25 + j * 0.5 for j in range(len(JOINTS))], dtype=np.float32)


def action(episode: int, frame: int) -> NDArray[np.float32]:
    return np.asarray([(frame + 1) * (j - 1.5) / 4 - episode for j in range(len(JOINTS))], dtype=np.float32)


def reward(frame: int, length: int) -> float:
    return frame / (length - 1)


def intervention(frame: int) -> bool:
    return frame in (3, 4)


def main() -> None:
    """Writes the fixture; LeRobot is imported here only, so tests can import this module."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset.create(
        REPO_ID, FPS, features(), root=FIXTURE, robot_type=ROBOT_TYPE, use_videos=True
    )
    for ep, (length, task) in enumerate(EPISODES):
        for i in range(length):
            frame: dict[str, Any] = {
                f"observation.images.{cam}": image(ep, i, k) for k, cam in enumerate(CAMERAS)
            }
            frame |= {
                "observation.state": state(ep, i),
                "action": action(ep, i),
                "next.reward": np.asarray([reward(i, length)], dtype=np.float32),
                "next.success": np.asarray([i == length - 1]),
                "intervention": np.asarray([intervention(i)]),
                "task": task,
            }
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    shutil.rmtree(FIXTURE / "images", ignore_errors=True)  # LeRobot's emptied frame staging


def check_export(root: Path) -> None:
    """Loads a wamfleet export with LeRobot's reader and normalises one frame with LeRobot's
    NormalizerProcessorStep in every mode (it raises when a stat it needs is missing)."""
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.processor import NormalizerProcessorStep, TransitionKey, batch_to_transition
    from lerobot.utils.feature_utils import dataset_to_policy_features

    dataset = LeRobotDataset("wamfleet/export", root=root)
    item = dataset[len(dataset) - 1]
    batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v] for k, v in item.items()}
    features = dataset_to_policy_features(dataset.meta.features)
    modes = [m for m in NormalizationMode if m is not NormalizationMode.IDENTITY]
    for mode in modes:
        norm_map = {FeatureType.STATE: mode, FeatureType.ACTION: mode, FeatureType.VISUAL: mode}
        step = NormalizerProcessorStep.from_lerobot_dataset(dataset, features, norm_map)
        out = step(batch_to_transition(batch))
        assert not torch.equal(out[TransitionKey.ACTION], batch["action"]), mode
    stats = dataset.meta.stats
    assert stats is not None
    print(f"{root}: {dataset.num_episodes} episodes, {len(dataset)} frames")
    print("normalised a frame in modes", [m.value for m in modes])
    print("stats:", {k: sorted(v) for k, v in stats.items()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="replace an existing fixture directory")
    parser.add_argument("--check-export", type=Path, help="check a wamfleet export with LeRobot's reader")
    args = parser.parse_args()
    if args.check_export:
        check_export(args.check_export)
    else:
        if FIXTURE.exists():
            if not args.force:
                raise SystemExit(f"{FIXTURE} exists; pass --force to replace it")
            shutil.rmtree(FIXTURE)
        main()
        print(f"wrote {FIXTURE}")
