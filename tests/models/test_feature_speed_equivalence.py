"""The fast feature builders equal the straightforward formulation, bit for bit.

``tabular_features``, ``target_dynamics`` and ``XGBoostForecaster.features`` fill
one preallocated array and sort instead of ``np.median``; the references below
are the plain versions they replaced (concatenate of NumPy reductions). Saved
models are only valid if these match exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.features import (
    FeatureSpec,
    calendar_features,
    gather_windows,
    residual_scale,
    tabular_feature_names,
    tabular_features,
    target_times,
)
from slocast.core.schema import FEATURE_COLUMNS, TARGET_INDEX
from slocast.models.xgboost_forecaster import (
    _EWM_ALPHAS,
    XGBoostForecaster,
    target_dynamics,
    target_dynamics_names,
)

C = len(FEATURE_COLUMNS)


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
    weights = [(1 - a) ** np.arange(spec.window)[::-1] for a in _EWM_ALPHAS]
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


@pytest.mark.parametrize("n_windows", [1, 7, 500])
@pytest.mark.parametrize("kind", ["random", "heavy", "ties", "nan", "idle"])
@pytest.mark.parametrize("window", [10, 2, 5])
def test_fast_features_equal_reference(n_windows, kind, window):
    rng = np.random.default_rng([n_windows, window, len(kind), ord(kind[0])])
    spec = _spec(rng, window)
    n_rows = window + n_windows + 20
    times, values = _series(rng, spec, n_rows, kind)
    ends = np.sort(rng.choice(np.arange(window, n_rows + 1), n_windows, replace=False))

    tab = tabular_features(spec, times, values, ends)
    dyn = target_dynamics(spec, values, ends)
    _assert_same(tab, reference_tabular(spec, times, values, ends))
    _assert_same(dyn, reference_dynamics(spec, values, ends))
    assert tab.shape[1] == len(tabular_feature_names(spec))
    assert dyn.shape[1] == len(target_dynamics_names(spec))

    scale = residual_scale(spec, values, ends)
    np.testing.assert_array_equal(scale, reference_residual_scale(spec, values, ends))
    assert scale.shape == (n_windows, 1, len(TARGET_INDEX))

    full = XGBoostForecaster(spec).features(times, values, ends)
    _assert_same(full, np.concatenate([tab, dyn], axis=1))
    assert full.flags.c_contiguous


def test_serving_shaped_batches_equal_reference():
    """Stacked independent histories (the server's layout): end = k * rows."""
    rng = np.random.default_rng(7)
    spec = _spec(rng, 10)
    for n_series in (1, 7, 500):
        times, values = _series(rng, spec, 10 * n_series, "heavy")
        ends = np.arange(1, n_series + 1, dtype=np.int64) * 10
        _assert_same(
            XGBoostForecaster(spec).features(times, values, ends),
            np.concatenate(
                [
                    reference_tabular(spec, times, values, ends),
                    reference_dynamics(spec, values, ends),
                ],
                axis=1,
            ),
        )


def test_out_of_range_ends_still_raise():
    rng = np.random.default_rng(5)
    spec = _spec(rng, 10)
    times, values = _series(rng, spec, 30, "random")
    for ends in ([9], [31], [10, 31], [9, 30]):
        with pytest.raises(IndexError):
            tabular_features(spec, times, values, np.array(ends))
        with pytest.raises(IndexError):
            XGBoostForecaster(spec).features(times, values, np.array(ends))
        with pytest.raises(IndexError):
            residual_scale(spec, values, np.array(ends))


def test_spec_cache_does_not_change_the_spec():
    rng = np.random.default_rng(3)
    spec = _spec(rng, 10)
    before = spec.to_dict()
    times, values = _series(rng, spec, 30, "random")
    tabular_features(spec, times, values, np.array([10, 30]))
    assert spec.to_dict() == before
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
