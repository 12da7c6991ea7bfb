"""The ensemble: weights chosen on validation, members stored as safe sub-bundles."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.synthetic import generate_lte
from slocast.evaluate.scoring import score
from slocast.models.bundle import load_bundle, save_bundle
from slocast.models.ensemble import headline_nrmse, select_weights
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
