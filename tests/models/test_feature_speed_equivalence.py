"""The table-driven feature builder equals the straightforward formulation, bit for bit.

``window_features`` (and so ``XGBoostForecaster.features``) walks
``FEATURE_BLOCKS`` and sorts instead of ``np.median``; the references below are the
plain versions (concatenate of NumPy reductions) the table replaced. Saved models
are only valid if these match exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.features import (
    FeatureSpec,
    calendar_features,
    feature_names,
    gather_windows,
    residual_scale,
    target_times,
    window_features,
)
from slocast.core.schema import FEATURE_COLUMNS, TARGET_INDEX
from slocast.models.xgboost_forecaster import XGBoostForecaster

C = len(FEATURE_COLUMNS)
EWM_ALPHAS = (0.5, 0.2)


def reference_tabular(spec, times, values, ends):
    windows = np.minimum(gather_windows(values, ends, spec.window), np.asarray(spec.caps))
    n = windows.shape[0]
    when = target_times(times, ends, 1, spec.step_seconds)[:, 0]
    parts = [
        windows.reshape(n, -1),
        windows.mean(axis=1),
        windows.std(axis=1),
        windows.min(axis=1),
        windows.max(axis=1),
        windows[:, -1, :] - windows[:, 0, :],
        calendar_features(when),
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


def reference_dynamics(spec, values, ends):
    windows = np.minimum(gather_windows(values, ends, spec.window), np.asarray(spec.caps))
    w = windows[:, :, list(TARGET_INDEX)]
    mean = w.mean(axis=1)
    median = np.median(w, axis=1)
    floor = 1e-3 * np.abs(np.asarray(spec.target_center))
    weights = [(1 - a) ** np.arange(spec.window)[::-1] for a in EWM_ALPHAS]
    lag2, lag3 = w[:, -min(2, spec.window)], w[:, -min(3, spec.window)]
    parts = [
        w[:, -1] - lag2,
        lag2 - lag3,
        w[:, -1] - lag3,
        *[(w * (wt / wt.sum())[None, :, None]).sum(axis=1) for wt in weights],
        w[:, -1] / np.maximum(mean, floor),
        w[:, -1] - median,
        median,
        np.median(w[:, -3:], axis=1),
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


def reference_residual_scale(spec, values, ends):
    windows = np.minimum(gather_windows(values, ends, spec.window), np.asarray(spec.caps))
    level = np.abs(windows[..., list(TARGET_INDEX)]).mean(axis=1)
    floor = 0.05 * (np.abs(np.asarray(spec.target_center)) + np.asarray(spec.target_scale))
    return (level + floor)[:, None, :]


def _spec(rng, window):
    caps = rng.uniform(0.5, 2.0, C) * 10.0 ** rng.integers(-2, 9, C)
    return FeatureSpec(
        window=window,
        horizon=2,
        step_seconds=120.0,
        caps=tuple(float(c) for c in caps),
        center=tuple(0.0 for _ in range(C)),
        scale=tuple(1.0 for _ in range(C)),
        target_center=tuple(float(c) / 3 for c in caps[list(TARGET_INDEX)]),
        target_scale=tuple(1.0 for _ in TARGET_INDEX),
    )


def _series(rng, spec, n_rows, kind):
    caps = np.asarray(spec.caps)
    if kind == "random":
        values = rng.random((n_rows, C)) * caps * 1.3  # some rows above the caps
    elif kind == "heavy":
        values = rng.lognormal(0.0, 2.0, (n_rows, C)) * caps / 20
    elif kind == "ties":  # flat runs and repeated values: median ties, zero std
        values = np.repeat(rng.integers(0, 3, (n_rows // 4 + 1, C)), 4, axis=0)[:n_rows]
        values = values.astype(np.float64) * caps / 2
    elif kind == "nan":
        values = rng.random((n_rows, C)) * caps
        values[rng.random((n_rows, C)) < 0.05] = np.nan
    else:  # idle: zeros (the ratio floor)
        values = np.zeros((n_rows, C))
    start = np.datetime64("2023-03-25T22:00:00", "ns") + rng.integers(0, 10**6) * np.timedelta64(
        120, "s"
    )
    times = start + np.arange(n_rows) * np.timedelta64(120, "s")
    return times, values


def _assert_same(got, want):
    assert got.dtype == want.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN == NaN here


def reference_features(spec, times, values, ends):
    return np.concatenate(
        [reference_tabular(spec, times, values, ends), reference_dynamics(spec, values, ends)],
        axis=1,
    )


@pytest.mark.parametrize("n_windows", [1, 7, 500])
@pytest.mark.parametrize("kind", ["random", "heavy", "ties", "nan", "idle"])
@pytest.mark.parametrize("window", [10, 2, 5, 1])
def test_features_equal_plain_reference(n_windows, kind, window):
    rng = np.random.default_rng([n_windows, window, len(kind), ord(kind[0])])
    spec = _spec(rng, window)
    n_rows = window + n_windows + 20
    times, values = _series(rng, spec, n_rows, kind)
    ends = np.sort(rng.choice(np.arange(window, n_rows + 1), n_windows, replace=False))

    full = window_features(spec, times, values, ends)
    _assert_same(full, reference_features(spec, times, values, ends))
    assert full.shape[1] == len(feature_names(spec))
    assert full.flags.c_contiguous
    _assert_same(XGBoostForecaster(spec).features(times, values, ends), full)

    scale = residual_scale(spec, values, ends)
    np.testing.assert_array_equal(scale, reference_residual_scale(spec, values, ends))
    assert scale.shape == (n_windows, 1, len(TARGET_INDEX))


def test_serving_shaped_batches_equal_reference():
    """Stacked independent histories (the server's layout): end = k * rows."""
    rng = np.random.default_rng(7)
    spec = _spec(rng, 10)
    for n_series in (1, 7, 500):
        times, values = _series(rng, spec, 10 * n_series, "heavy")
        ends = np.arange(1, n_series + 1, dtype=np.int64) * 10
        _assert_same(
            window_features(spec, times, values, ends),
            reference_features(spec, times, values, ends),
        )


def test_out_of_range_ends_still_raise():
    rng = np.random.default_rng(5)
    spec = _spec(rng, 10)
    times, values = _series(rng, spec, 30, "random")
    for ends in ([9], [31], [10, 31], [9, 30]):
        with pytest.raises(IndexError):
            window_features(spec, times, values, np.array(ends))
        with pytest.raises(IndexError):
            residual_scale(spec, values, np.array(ends))


def test_features_do_not_change_the_spec():
    rng = np.random.default_rng(3)
    spec = _spec(rng, 10)
    before = spec.to_dict()
    times, values = _series(rng, spec, 30, "random")
    window_features(spec, times, values, np.array([10, 30]))
    assert spec.to_dict() == before
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert set(vars(spec)) == {f for f in FeatureSpec.__dataclass_fields__}  # nothing cached
