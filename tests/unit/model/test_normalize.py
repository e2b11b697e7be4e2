"""QuantileNormalizer: constant dimensions come back as the constant; everything clamps to [q01, q99]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wamfleet.model.normalize import QuantileNormalizer

torch.set_num_threads(1)

CONSTANTS = (0.0, 3.7, -2.5)


def data(n: int = 500, seed: int = 0) -> np.ndarray:
    """Two varying columns then the constant ones (an unused gripper, a fixed joint)."""
    rng = np.random.default_rng(seed)
    varying = np.stack([rng.normal(0.3, 2.0, n), rng.uniform(-5.0, 10.0, n)], axis=1)
    return np.concatenate([varying, np.tile(np.asarray(CONSTANTS), (n, 1))], axis=1)


def test_a_constant_dimension_denormalizes_to_its_constant_at_zero() -> None:
    # The old code returned q01 + 0.5 here (a 1.0 stand-in span around a 0 normalised value).
    norm = QuantileNormalizer.fit(np.full((10, 1), 3.7))
    assert norm.normalize([3.7])[0] == 0.0
    assert norm.denormalize([0.0])[0] == np.float32(3.7)


@pytest.mark.parametrize("value", [-1e6, -1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 2.0, 1e6])
def test_constant_dimensions_come_back_exactly_for_any_normalized_input(value: float) -> None:
    norm = QuantileNormalizer.fit(data())
    out = norm.denormalize(np.full((3, norm.dim), value))
    assert np.array_equal(out[:, 2:], np.tile(np.asarray(CONSTANTS, np.float32), (3, 1)))


def test_constant_dimensions_round_trip_exactly() -> None:
    x = data()
    norm = QuantileNormalizer.fit(x)
    y = norm.normalize(x)
    assert np.array_equal(y[:, 2:], np.zeros_like(y[:, 2:]))
    assert np.array_equal(norm.denormalize(y)[:, 2:], x[:, 2:].astype(np.float32))


def test_varying_dimensions_round_trip_inside_the_quantiles() -> None:
    x = data()
    norm = QuantileNormalizer.fit(x)
    inside = np.all((x[:, :2] >= norm.q01[:2]) & (x[:, :2] <= norm.q99[:2]), axis=1)
    assert inside.sum() > 400
    y = norm.normalize(x[inside])
    assert y.dtype == np.float32
    assert np.all((y >= -1.0) & (y <= 1.0))
    np.testing.assert_allclose(norm.denormalize(y), x[inside].astype(np.float32), rtol=1e-5, atol=1e-5)


def test_out_of_range_values_clamp_to_the_bounds_on_both_paths() -> None:
    norm = QuantileNormalizer(np.asarray([-2.0, 0.1], np.float32), np.asarray([4.0, 0.7], np.float32))
    expected = np.asarray([[-1.0, 1.0], [-1 / 3, -1.0]], np.float32)
    assert np.array_equal(norm.normalize([[-100.0, 5.0], [0.0, 0.0]]), expected)
    out = norm.denormalize([[-3.0, 1.5], [7.0, -1.01], [1.0, -1.0]])
    assert np.array_equal(out, np.asarray([[-2.0, 0.7], [4.0, 0.1], [4.0, 0.1]], np.float32))


def test_non_finite_values_pass_through_instead_of_clamping() -> None:
    norm = QuantileNormalizer.fit(data())
    row = np.asarray([[np.nan, np.inf, -np.inf, np.nan, 0.0]], np.float32)
    out = norm.denormalize(row)
    assert np.isnan(out[0, 0]) and np.isnan(out[0, 3])
    assert out[0, 1] == np.inf and out[0, 2] == -np.inf
    assert out[0, 4] == np.float32(-2.5)
    back = norm.normalize(row)
    assert np.isnan(back[0, 0]) and np.isnan(back[0, 3]) and back[0, 1] == np.inf


def test_dict_round_trip_keeps_the_format() -> None:
    norm = QuantileNormalizer.fit(data())
    d = norm.to_dict()
    assert set(d) == {"q01", "q99"} and all(isinstance(v, float) for v in d["q01"])
    again = QuantileNormalizer.from_dict(d)
    assert np.array_equal(again.q01, norm.q01) and np.array_equal(again.q99, norm.q99)


def test_bad_statistics_and_widths_raise() -> None:
    with pytest.raises(ValueError, match=r"^q99: below q01"):
        QuantileNormalizer.from_dict({"q01": [0.0, 1.0], "q99": [1.0, 0.5]})
    with pytest.raises(ValueError, match=r"^q01/q99"):
        QuantileNormalizer.from_dict({"q01": [0.0], "q99": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"^values: last dimension 3"):
        QuantileNormalizer.fit(data()).denormalize(np.zeros((2, 3)))
