"""The TPOT objective: pinball-loss boosting on log latency, monotone, served unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from slocast.core.metrics import coverage
from slocast.latency import model as m
from slocast.latency.features import FEATURE_NAMES, INCREASING, build_features, regimes
from slocast.latency.native import native_forest
from slocast.latency.synthetic import generate

PARAMS = m.TARGET_PARAMS["tpot"]


@pytest.fixture(scope="module")
def tpot_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = generate("sharegpt-like", 6000, seed=11)
    y = cols["actual_tpot_ms"]
    observed = y > 0
    return build_features(cols)[observed], y[observed], regimes(cols)[observed]


@pytest.fixture(scope="module")
def booster(tpot_data):
    x, y, _ = tpot_data
    half = y.shape[0] // 2
    return m.fit_booster(x[:half], y[:half], 0.9, PARAMS, seed=0)


def test_tpot_uses_the_log_quantile_objective() -> None:
    assert PARAMS.objective == "log_quantile"


def test_trees_alone_estimate_the_quantile(tpot_data, booster) -> None:
    """Before any conformal offset the trees already sit near the P90 of fresh rows
    (a log-mean model covers about half); the conformal offset only corrects the
    rest (100 small steps from the median do not quite reach it on this wide law)."""
    x, y, _ = tpot_data
    half = y.shape[0] // 2
    point = m.predict_booster(booster, x[half:], PARAMS.objective)
    assert 0.8 < coverage(y[half:], point) < 0.95
    mean_params = m.TreeParams(objective="log_squared", max_depth=3, n_estimators=100)
    mean_model = m.fit_booster(x[:half], y[:half], 0.9, mean_params, seed=0)
    assert coverage(y[half:], m.predict_booster(mean_model, x[half:], "log_squared")) < 0.65


def test_smoothed_pinball_gradient() -> None:
    objective = m.smoothed_pinball(0.9, width=0.01)

    class Labels:
        def get_label(self) -> np.ndarray:
            return np.array([1.0, 1.0, 1.0])

    grad, hess = objective(np.array([0.5, 1.0, 1.5]), Labels())
    # far below the label: -q; at it: 1/2 - q; far above: 1 - q; unit hessian
    np.testing.assert_allclose(grad, [-0.9, -0.4, 0.1], atol=1e-9)
    np.testing.assert_array_equal(hess, np.ones(3))


def test_monotone_in_every_increasing_feature(tpot_data, booster) -> None:
    x, _, _ = tpot_data
    rows = x[:500]
    base = m.predict_booster(booster, rows, PARAMS.objective)
    for name in INCREASING:
        j = FEATURE_NAMES.index(name)
        for delta in (1.0, 10.0, 1000.0):
            grown = rows.copy()
            grown[:, j] += delta
            after = m.predict_booster(booster, grown, PARAMS.objective)
            assert (after >= base * (1 - 1e-6)).all(), name


def test_stored_as_identity_regression_and_compiles_identically(
    booster, tpot_data, tmp_path: Path
) -> None:
    """Serving is unchanged: a squared-error (identity) booster whose raw output is
    log latency, evaluated by the native forest engine to the same numbers."""
    config = json.loads(booster.save_config())
    assert config["learner"]["objective"]["name"] == "reg:squarederror"
    path = tmp_path / "tpot.ubj"
    booster.save_model(path)
    compiled = native_forest(xgb.Booster(model_file=str(path)))
    x = tpot_data[0][:300]
    raw = np.asarray(booster.inplace_predict(x), np.float64)
    np.testing.assert_allclose(compiled.predict(x), raw, rtol=1e-5, atol=1e-5)
    served = m.point_from_raw(compiled.predict(x), PARAMS.objective)
    np.testing.assert_allclose(served, m.predict_booster(booster, x, PARAMS.objective), rtol=1e-4)


def test_save_load_round_trip(tpot_data, tmp_path: Path) -> None:
    x, y, r = tpot_data
    fitted, _ = m.fit_selected("tpot", x[:1500], y[:1500], r[:1500], 0.9, (PARAMS,), seed=3)
    files = fitted.save(tmp_path)
    loaded = m.load_target_model(tmp_path, "tpot", files)
    assert loaded.objective == "log_quantile"
    np.testing.assert_array_equal(
        loaded.predict(x[1500:], r[1500:]), fitted.predict(x[1500:], r[1500:])
    )
    assert abs(coverage(y[1500:], loaded.predict(x[1500:], r[1500:])) - 0.9) < 0.05


def test_inner_cv_never_reads_the_test_rows() -> None:
    """Selection scores come from the 90% only: poisoning the test 10% changes nothing."""
    from slocast.latency.protocol import run_seed_inner_cv, split

    cols = generate("sharegpt-like", 1200, seed=4)
    y = cols["actual_tpot_ms"]
    observed = y > 0
    x, y, r = build_features(cols)[observed], y[observed], regimes(cols)[observed]
    clean = run_seed_inner_cv(x, y, r, seed=0, params=PARAMS, folds=3)
    _, test = split(y.shape[0], seed=0)
    x_bad, y_bad = x.copy(), y.copy()
    x_bad[test], y_bad[test] = np.nan, 1e9
    poisoned = run_seed_inner_cv(x_bad, y_bad, r, seed=0, params=PARAMS, folds=3)
    assert clean == poisoned
    assert 0.8 < clean[0].coverage < 1.0


def test_upstream_trees_on_log_latency_serve_the_quantile(tpot_data, tmp_path: Path) -> None:
    """``log_quantileerror``: XGBoost's quantile trees on log latency, served as
    exp(raw) by the native forest engine and after a save/load, their bound near the P90."""
    x, y, r = tpot_data
    params = m.LOG_UPSTREAM
    assert params.objective in m.LOG_OBJECTIVES
    assert params.objective not in m.MONOTONE_OBJECTIVES  # leaves are re-fitted
    fitted, _ = m.fit_selected("tpot", x[:2000], y[:2000], r[:2000], 0.9, (params,), seed=2)
    point = m.predict_booster(fitted.booster, x[2000:], params.objective)
    assert 0.85 < coverage(y[2000:], point) < 0.95  # the trees alone: a P90 in ms
    files = fitted.save(tmp_path)
    loaded = m.load_target_model(tmp_path, "tpot", files)
    np.testing.assert_array_equal(
        loaded.predict(x[2000:], r[2000:]), fitted.predict(x[2000:], r[2000:])
    )
    compiled = native_forest(xgb.Booster(model_file=str(tmp_path / files["trees"])))
    served = m.point_from_raw(compiled.predict(x[2000:]), params.objective)
    np.testing.assert_allclose(served, point, rtol=1e-4)
