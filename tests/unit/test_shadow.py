"""Shadow mirroring on the robot and the reply checks that keep NaN actions off a robot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.serving.policy_support import tiny_policy
from wamfleet.fleet_agent.policy_client import PolicyError, _actions, open_policy_client
from wamfleet.fleet_agent.shadow import ShadowedClient
from wamfleet.model.policy import load_policy
from wamfleet.pipelines.engine_client import EnginePolicyClient
from wamfleet.platform.contracts.rollout import TAG_SHADOW_ACTION_MSE, TAG_SHADOW_ERRORS, TAG_SHADOW_REQUESTS
from wamfleet.serving.engine import PolicyEngine

torch.set_num_threads(1)


def test_non_finite_actions_are_a_failed_request() -> None:
    with pytest.raises(PolicyError, match="NaN or inf"):
        _actions(np.array([[0.0, np.nan], [0.0, 0.0]], np.float32))
    with pytest.raises(PolicyError, match="NaN or inf"):
        _actions(np.array([[np.inf, 0.0]], np.float32))
    assert _actions([[0.5, -0.5]]).shape == (1, 2)


def test_shadow_sees_every_observation_and_is_compared_never_executed(tmp_path: Path) -> None:
    champion = PolicyEngine(load_policy(tiny_policy(tmp_path / "a", seed=0)), version="a")
    candidate = PolicyEngine(load_policy(tiny_policy(tmp_path / "b", seed=1)), version="b")
    try:
        primary, shadow = EnginePolicyClient(champion), EnginePolicyClient(candidate)
        mirror = ShadowedClient(primary, shadow, "b")
        images = np.zeros((2, 96, 96, 3), np.uint8)
        state = np.zeros(39, np.float32)
        for _ in range(3):
            chunk = mirror.infer("s1", "reach", images, state)
            assert chunk.policy_version == "a"  # what the robot executes is the champion's
        stats = mirror.drain()
        assert stats.requests == 3 and stats.errors == 0
        assert len(stats.squared_errors) == 3 and all(e > 0 for e in stats.squared_errors)
        tags = stats.tags()
        assert tags[TAG_SHADOW_REQUESTS] == "3" and tags[TAG_SHADOW_ERRORS] == "0"
        assert float(tags[TAG_SHADOW_ACTION_MSE]) > 0
        # A shadow whose server is down is counted, and the robot's own replies are untouched.
        dead = open_policy_client("ws://127.0.0.1:1", timeout_s=0.5)
        broken = ShadowedClient(primary, dead, "b")
        assert broken.infer("s2", "reach", images, state).policy_version == "a"
        assert broken.drain().errors == 1
        broken.close()
        dead.close()
        mirror.close()
    finally:
        champion.close()
        candidate.close()
