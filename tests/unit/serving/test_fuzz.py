"""Property test: no malformed message breaks the websocket handler or the engine behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.unit.serving.policy_support import tiny_policy
from wamfleet.model.policy import load_policy
from wamfleet.platform.contracts.protocol import packb, unpackb
from wamfleet.serving.engine import PolicyEngine
from wamfleet.serving.websocket import _answer

torch.set_num_threads(1)

dtypes = st.sampled_from([np.uint8, np.float32, np.int64, np.float64, np.bool_])
arrays = hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=5, max_side=4))
values = st.one_of(
    st.none(), st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=20), arrays
)
observations = st.fixed_dictionaries(
    {},
    optional={
        "images": values,
        "state": values,
        "instruction": values,
        "prompt": values,
        "session_id": values,
        "endpoint": st.one_of(st.sampled_from(["infer", "reset"]), values),
        "reset": values,
    },
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    return PolicyEngine(load_policy(tiny_policy(tmp_path_factory.mktemp("fuzz") / "p")), version="fuzz")


def answer(engine: PolicyEngine, data: bytes) -> bytes | str:
    return asyncio.run(_answer(engine, data))


def packed(obs: dict[str, object]) -> bytes | None:
    try:
        return bytes(packb(obs))
    except (OverflowError, ValueError, TypeError):
        return None  # nothing a client could send


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.one_of(st.binary(max_size=256), observations.map(packed).filter(lambda m: m is not None)))
def test_malformed_messages_get_an_error_and_never_crash(engine: PolicyEngine, message: bytes) -> None:
    reply = answer(engine, message)
    if isinstance(reply, bytes):  # it happened to be a valid request (e.g. a reset)
        assert isinstance(unpackb(reply), dict)
    else:
        assert ":" in reply  # "<input>: <problem>"


def test_a_valid_request_is_served_after_the_storm(engine: PolicyEngine) -> None:
    for junk in (
        b"",
        b"\x00" * 10,
        bytes(packb([1, 2, 3])),
        bytes(packb({"images": np.zeros((2, 2), np.float64)})),
    ):
        assert isinstance(answer(engine, junk), str)
    valid = {
        "images": np.zeros((2, 96, 96, 3), np.uint8),
        "state": np.zeros(39, np.float32),
        "prompt": "reach",
        "session_id": "after-fuzz",
    }
    reply = answer(engine, bytes(packb(valid)))
    assert isinstance(reply, bytes)
    assert unpackb(reply)["actions"].shape == (8, 4)


def test_oversized_message_is_refused(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import wamfleet.serving.websocket as ws

    monkeypatch.setattr(ws, "MAX_MESSAGE_BYTES", 100)
    reply = answer(engine, bytes(packb({"images": np.zeros((2, 96, 96, 3), np.uint8)})))
    assert isinstance(reply, str) and "exceeds the 100-byte limit" in reply
    _ = Path
