"""Bounds (all levels at once, as the server computes them) equal ModelBundle.upper."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.conformal import Calibration
from slocast.core.features import FeatureSpec, predicted_change, residual_scale
from slocast.core.schema import FEATURE_COLUMNS, TARGET_INDEX
from slocast.models.baselines import Persistence
from slocast.models.bundle import ModelBundle
from slocast.serve.bounds import Bounds

C, K, H, W = len(FEATURE_COLUMNS), len(TARGET_INDEX), 3, 10
LEVELS = (0.5, 0.8, 0.9, 0.99)


def _bundle(rng: np.random.Generator, normalised: bool, bins: int) -> ModelBundle:
    values = rng.lognormal(0, 1, (2000, C)) * 10.0 ** rng.integers(-2, 8, C)
    spec = FeatureSpec.fit(values, window=W, horizon=H, step_seconds=120.0, cap_quantile=0.99)
    n = 600
    ends = rng.integers(W, len(values), n)
    point = rng.normal(1, 0.3, (n, H, K)) * values[ends - 1][:, None, list(TARGET_INDEX)]
    truth = point * rng.lognormal(0, 0.3, point.shape)
    scale = residual_scale(spec, values, ends) if normalised or bins > 1 else None
    change = predicted_change(spec, point, values, ends, scale) if bins > 1 else None
    calibration = Calibration.fit(
        truth,
        point,
        LEVELS,
        scale=scale if normalised else None,
        group_by=change,
        bins=bins,
        min_group_size=20,
    )
    return ModelBundle(forecaster=Persistence(spec), calibration=calibration)


@pytest.mark.parametrize(("normalised", "bins"), [(False, 1), (True, 1), (True, 4), (False, 3)])
@pytest.mark.parametrize("windows", [1, 2, 37])
def test_bounds_equal_bundle_upper(normalised: bool, bins: int, windows: int) -> None:
    rng = np.random.default_rng([windows, bins, normalised])
    bundle = _bundle(rng, normalised, bins)
    values = rng.lognormal(0, 1.5, (W * windows, C)) * 10.0 ** rng.integers(-2, 8, C)
    values[rng.random(values.shape) < 0.05] = 0.0
    ends = np.arange(1, windows + 1, dtype=np.int64) * W
    point = rng.normal(1, 0.5, (windows, H, K)) * values[ends - 1][:, None, list(TARGET_INDEX)]
    bounds = Bounds(bundle)
    assert bounds.levels == LEVELS
    which = [3, 0, 2]
    got = bounds.upper(point, values, ends, which)
    assert got.shape == (len(which), windows, H, K)
    for row, i in zip(got, which, strict=True):
        np.testing.assert_array_equal(row, bundle.upper(point, LEVELS[i], values, ends))


def test_absurd_scale_raises_value_error() -> None:
    rng = np.random.default_rng(0)
    bundle = _bundle(rng, True, 1)
    values = np.full((W, C), -1e308)
    ends = np.array([W], np.int64)
    point = np.zeros((1, H, K))
    with pytest.raises(ValueError):
        bundle.upper(point, 0.9, values, ends)
    with pytest.raises(ValueError):
        Bounds(bundle).upper(point, values, ends, [2])
