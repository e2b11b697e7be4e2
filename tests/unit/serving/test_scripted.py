"""The scripted expert of known quality, served through the same predictor as a WAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wamfleet.fleet_agent.sim.scripted_policy import ScriptedExpert, write_scripted_policy
from wamfleet.fleet_agent.sim.tasks import instruction_for
from wamfleet.platform.cli.serve_cmd import _scripted_loaders
from wamfleet.serving.engine import InferRequest, RequestError
from wamfleet.serving.predictor import WAMPredictor

IMAGES = np.zeros((2, 16, 16, 3), np.uint8)


def test_quality_is_the_share_of_episodes_the_expert_drives() -> None:
    expert = ScriptedExpert(0.3, ("reach-v3",), seed=1)
    share = np.mean([expert.competent(f"episode-{i}") for i in range(4000)])
    assert share == pytest.approx(0.3, abs=0.03)
    assert expert.competent("episode-7") == expert.competent("episode-7")  # a retry gets the same answer
    assert not ScriptedExpert(0.0, ("reach-v3",)).competent("any")


def test_served_through_the_predictor_like_a_wam(tmp_path: Path) -> None:
    write_scripted_policy(tmp_path / "p", 1.0, ("reach-v3",), version="expert/1")
    predictor = WAMPredictor("wam", str(tmp_path / "p"), scripted=_scripted_loaders())
    assert predictor.load() and predictor.engine is not None
    engine = predictor.engine
    meta = engine.metadata()
    assert meta.policy_version == "expert/1" and meta.state_dim == 39
    state = np.zeros(39, np.float32)
    state[36:39] = [0.1, 0.8, 0.2]  # the goal, away from the hand at the origin
    result = engine.infer(InferRequest("s", instruction_for("reach-v3"), IMAGES, state))
    assert result.actions.shape == (8, 4) and np.abs(result.actions).max() > 0
    with pytest.raises(RequestError, match="state: expected 39 values"):
        engine.infer(InferRequest("s", "reach", IMAGES, np.zeros(3, np.float32)))
    with pytest.raises(RequestError, match="none of this expert's tasks"):
        engine.infer(InferRequest("s", "open the door", IMAGES, state))


def test_a_kind_the_server_does_not_know_is_refused(tmp_path: Path) -> None:
    write_scripted_policy(tmp_path / "p", 0.5, ("reach-v3",))
    with pytest.raises(ValueError, match="kind 'scripted-expert' is not served here"):
        WAMPredictor("wam", str(tmp_path / "p")).load()
    with pytest.raises(ValueError, match="quality"):
        write_scripted_policy(tmp_path / "q", 1.5, ("reach-v3",))
