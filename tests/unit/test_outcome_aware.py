"""Outcome-aware training: failed episodes teach the world model, never the policy's actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import frame_images
from wamfleet.fleet_agent.episode_reader import EpisodeReader
from wamfleet.fleet_agent.episode_writer import EpisodeWriter
from wamfleet.model.config import WAMConfig
from wamfleet.model.objective import WAMBatch, flow_matching_loss
from wamfleet.model.transformer import WorldActionModel
from wamfleet.model.vae import VideoCodec
from wamfleet.pipelines.windows import episode_windows, imitated_frames
from wamfleet.platform.contracts.curation import CurationRecipe
from wamfleet.platform.contracts.embodiment import EmbodimentSpec
from wamfleet.platform.contracts.episode import Outcome

FRAMES = 40


@pytest.fixture
def embodiment(embodiment: EmbodimentSpec) -> EmbodimentSpec:
    """conftest's arm with both cameras at one size: the model tiles views of equal shape."""
    cameras = [c.model_copy(update={"height": 32, "width": 32}) for c in embodiment.cameras]
    return embodiment.model_copy(update={"cameras": cameras})


def record(
    directory: Path, spec: EmbodimentSpec, success: bool | None, interventions: range = range(0)
) -> EpisodeReader:
    with EpisodeWriter(directory, robot_id="robot-1", embodiment=spec, task="stack the blocks") as writer:
        for i in range(FRAMES):
            state = np.full(spec.state_dim, i * 0.1, dtype=np.float32)
            action = np.full(spec.action_dim, 0.5 - i * 0.01, dtype=np.float32)
            writer.add_frame(frame_images(spec, i), state, action, intervention=i in interventions)
        writer.close(Outcome(success=success))
    return EpisodeReader(directory)


def tiny_config(spec: EmbodimentSpec) -> WAMConfig:
    return WAMConfig.preset_named(
        "tiny",
        cameras=[c.name for c in spec.cameras],
        embodiments=[{"name": spec.name, "state_dim": spec.state_dim, "action_dim": spec.action_dim}],
        context_chunks=1,
    )


def windows_of(reader: EpisodeReader, spec: EmbodimentSpec, rule: str = "world_model") -> list[bool]:
    cfg = tiny_config(spec)
    codec = VideoCodec(cfg).eval()
    samples = episode_windows(reader, codec, cfg, spec.name, None, None, failed_episodes=rule)  # type: ignore[arg-type]
    return [s.has_actions for s in samples]


def test_failed_episode_keeps_its_video_but_is_not_imitated(
    tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    torch.manual_seed(0)
    failed = record(tmp_path / "failed", embodiment, success=False)
    cfg = tiny_config(embodiment)
    samples = episode_windows(failed, VideoCodec(cfg).eval(), cfg, embodiment.name, None, None)
    assert samples, "a 40-frame episode holds windows of one 8-step chunk"
    assert not any(s.has_actions for s in samples)
    # The executed actions stay in the window: the video the world model learns follows them.
    assert all(float(s.actions.abs().sum()) > 0 for s in samples)
    assert imitated_frames(failed, "world_model") is not None


@pytest.mark.parametrize("success", [True, None])
def test_successful_or_unlabelled_episodes_are_imitated(
    tmp_path: Path, embodiment: EmbodimentSpec, success: bool | None
) -> None:
    reader = record(tmp_path / "ep", embodiment, success=success)
    assert imitated_frames(reader, "world_model") is None
    assert all(windows_of(reader, embodiment))


def test_interventions_inside_a_failed_episode_are_imitated(
    tmp_path: Path, embodiment: EmbodimentSpec
) -> None:
    # Frames 8..23 were a person's corrections: the windows starting at 8 and 16 (8 actions each)
    # hold only those, the others hold the policy's own actions.
    reader = record(tmp_path / "ep", embodiment, success=False, interventions=range(8, 24))
    assert windows_of(reader, embodiment) == [False, True, True, False]


def test_imitate_rule_trains_every_action(tmp_path: Path, embodiment: EmbodimentSpec) -> None:
    reader = record(tmp_path / "ep", embodiment, success=False)
    assert all(windows_of(reader, embodiment, "imitate"))


def test_recipe_default_is_outcome_aware_and_changes_the_dataset_hash() -> None:
    assert CurationRecipe().failed_episodes == "world_model"
    with pytest.raises(ValueError, match="failed_episodes"):
        CurationRecipe(failed_episodes="sometimes")  # type: ignore[arg-type]
    assert CurationRecipe().model_dump_json() != CurationRecipe(failed_episodes="imitate").model_dump_json()


def test_video_loss_weight_zero_trains_actions_alone() -> None:
    """The direct-action-regression baseline: same backbone, the video is never a target."""
    torch.manual_seed(0)
    cfg = WAMConfig.preset_named(
        "tiny", embodiments=[{"name": "arm", "state_dim": 3, "action_dim": 2}], context_chunks=1
    )
    vla = cfg.model_copy(update={"video_loss_weight": 0.0})
    (lh, lw), fc = cfg.latent_hw, cfg.latent_frames_per_chunk
    batch = WAMBatch(
        cond=torch.randn(2, cfg.vae.z_dim, 1, lh, lw),
        video=torch.randn(2, cfg.vae.z_dim, fc, lh, lw),
        actions=torch.randn(2, 1, cfg.actions_per_chunk, cfg.max_action_dim),
        action_mask=torch.cat([torch.ones(2, 2), torch.zeros(2, cfg.max_action_dim - 2)], dim=1),
        has_actions=torch.tensor([True, True]),
        states=torch.randn(2, 1, cfg.max_state_dim),
        state_mask=torch.ones(2, cfg.max_state_dim),
        text=torch.randn(2, 4, cfg.text.dim),
        text_mask=torch.ones(2, 4, dtype=torch.bool),
        embodiments=["arm", "arm"],
    )
    model = WorldActionModel(vla)
    out = flow_matching_loss(model, batch, torch.Generator().manual_seed(0))
    assert float(out.video_loss) > 0
    assert torch.allclose(out.loss, out.action_loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # The video output projection is never trained; the action decoder is.
    assert grads["proj_out.weight"] is None or float(grads["proj_out.weight"].abs().sum()) == 0.0
    assert grads["action_decoders.arm.weight"] is not None
    assert float(grads["action_decoders.arm.weight"].abs().sum()) > 0
    with pytest.raises(ValueError, match="video_loss_weight"):
        WAMConfig.preset_named("tiny", video_loss_weight=-1.0)
