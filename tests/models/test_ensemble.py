"""The ensemble: weights chosen on validation, members stored as safe sub-bundles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.features import fill_missing
from slocast.core.synthetic import generate_lte
from slocast.evaluate.scoring import score
from slocast.models.bundle import load_bundle, save_bundle
from slocast.models.ensemble import (
    BlendForecaster,
    blend_weights,
    headline_nrmse,
    select_weights,
)
from slocast.preprocess.stage import preprocess
from slocast.train.stage import train_ensemble, train_family


def test_selection_starts_from_the_best_member_and_only_adds_what_helps():
    rng = np.random.default_rng(0)
    truth = rng.gamma(2.0, 1.0, size=(2000, 1, 5)) + 1.0
    good = truth + rng.normal(scale=0.5, size=truth.shape)
    other = truth + rng.normal(scale=0.5, size=truth.shape)  # independent errors: averaging helps
    bad = truth + rng.normal(scale=5.0, size=truth.shape)
    weights = select_weights({"good": good, "other": other, "bad": bad}, truth)
    assert set(weights) == {"good", "other"}
    assert sum(weights.values()) == pytest.approx(1.0)
    blended = sum(w * {"good": good, "other": other}[n] for n, w in weights.items())
    assert headline_nrmse(truth, blended) < min(
        headline_nrmse(truth, good), headline_nrmse(truth, other)
    )
    assert select_weights({"bad": bad, "good": good}, truth) == {"good": 1.0}


def test_selection_finds_a_small_share_that_an_equal_share_would_not():
    """Independent errors of sd 0.5 and 1: half and half is worse than the better member
    alone (variance 0.3125 against 0.25), a fifth of the worse one is better (0.2). The
    selection keeps going after a round without a gain and returns the best round."""
    rng = np.random.default_rng(1)
    truth = rng.gamma(2.0, 1.0, size=(4000, 1, 5)) + 1.0
    good = truth + rng.normal(scale=0.5, size=truth.shape)
    weak = truth + rng.normal(scale=1.0, size=truth.shape)
    assert headline_nrmse(truth, (good + weak) / 2) > headline_nrmse(truth, good)
    weights = select_weights({"good": good, "weak": weak}, truth)
    assert 0.1 <= weights["weak"] <= 0.3
    assert weights["good"] == pytest.approx(1.0 - weights["weak"])
    blended = weights["good"] * good + weights["weak"] * weak
    assert headline_nrmse(truth, blended) < headline_nrmse(truth, good)


def test_ensemble_of_trained_members_round_trips(tmp_path):
    data = preprocess(generate_lte(3000, seed=5), None, PipelineConfig())
    members = {
        f: train_family(data, f, seed=0) for f in ("persistence", "seasonal_naive", "xgboost")
    }
    ensemble = train_ensemble(data, members)
    weights = ensemble.bundle.forecaster.weights
    assert "xgboost" in weights and sum(weights.values()) == pytest.approx(1.0)
    assert (
        ensemble.val_metrics["val_nrmse_avg"]
        <= members["xgboost"].val_metrics["val_nrmse_avg"] + 1e-9
    )
    save_bundle(ensemble.bundle, tmp_path / "e")
    loaded = load_bundle(tmp_path / "e")
    ends = data.ends("test")
    np.testing.assert_allclose(
        loaded.forecaster.predict(data.times, data.values, ends),
        ensemble.bundle.forecaster.predict(data.times, data.values, ends),
    )
    assert (
        score(loaded, data).nrmse["avg"] < score(members["persistence"].bundle, data).nrmse["avg"]
    )


def test_blend_weights_are_per_target_convex_and_favour_the_better_member():
    rng = np.random.default_rng(1)
    truth = rng.gamma(2.0, 1.0, size=(3000, 1, 5)) + 1.0
    noise = np.ones(5)
    noise_a, noise_b = noise.copy(), noise.copy()
    noise_a[0], noise_b[4] = 0.1, 0.1  # a is sharp on target 0, b on target 4
    a = truth + rng.normal(size=truth.shape) * noise_a
    b = truth + rng.normal(size=truth.shape) * noise_b
    weights = blend_weights({"a": a, "b": b}, truth)
    stacked = np.stack([weights["a"], weights["b"]])
    assert stacked.shape == (2, 5) and (stacked >= 0).all()
    np.testing.assert_allclose(stacked.sum(axis=0), 1.0)
    assert weights["a"][0] > 0.9 and weights["b"][4] > 0.9
    # Equal, independent errors elsewhere: both members count (averaging helps).
    assert 0.3 < weights["a"][2] < 0.7
    blended = weights["a"] * a + weights["b"] * b
    assert headline_nrmse(truth, blended) < min(headline_nrmse(truth, a), headline_nrmse(truth, b))


@pytest.fixture(scope="module")
def blend_case():
    data = preprocess(generate_lte(3000, seed=5), None, PipelineConfig())
    members = {f: train_family(data, f, seed=0) for f in ("persistence", "xgboost")}
    return data, members, train_ensemble(data, members, family="blend")


def test_blend_is_fitted_on_validation_only(blend_case):
    data, members, blend = blend_case
    assert blend.family == "blend"
    # Scramble every test row: the weights must not move.
    raw = data.raw.copy()
    test_rows = data.rows("test")
    raw[test_rows] = np.random.default_rng(0).permutation(raw[test_rows]) * 3.0
    scrambled = replace(data, raw=raw, values=fill_missing(raw))
    again = BlendForecaster.from_members(
        scrambled, {f: m.bundle.forecaster for f, m in members.items()}
    )[0]
    assert set(again.weights) == set(blend.bundle.forecaster.weights)
    for name, w in blend.bundle.forecaster.weights.items():
        np.testing.assert_array_equal(again.weights[name], w)
    # ... while changing validation rows does move them: as a random walk, where
    # persistence is the best forecast there is.
    raw = data.raw.copy()
    val_rows = data.rows("val")
    steps = np.random.default_rng(1).normal(0, 0.05, (val_rows.size, raw.shape[1]))
    raw[val_rows] = raw[val_rows[0]] * np.exp(np.cumsum(steps, axis=0))
    moved = BlendForecaster.from_members(
        replace(data, raw=raw, values=fill_missing(raw)),
        {f: m.bundle.forecaster for f, m in members.items()},
    )[0]
    assert any(
        not np.allclose(moved.weights.get(n, 0.0), w)
        for n, w in blend.bundle.forecaster.weights.items()
    )


def test_blend_bundle_round_trips_and_is_served_as_evaluated(blend_case, tmp_path):
    from slocast.serve.engines import make_predictor

    data, members, blend = blend_case
    assert (
        blend.val_metrics["val_nrmse_avg"] <= members["xgboost"].val_metrics["val_nrmse_avg"] + 1e-9
    )
    save_bundle(blend.bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.family == "blend"
    ends = data.ends("test")
    expected = blend.bundle.forecaster.predict(data.times, data.values, ends)
    predictor = make_predictor(
        loaded, tmp_path / "b", tmp_path / "compiled", tree_engine="compiled"
    )
    np.testing.assert_allclose(predictor.predict(data.times, data.values, ends), expected)
    for name, w in loaded.forecaster.weights.items():
        np.testing.assert_array_equal(w, blend.bundle.forecaster.weights[name])
