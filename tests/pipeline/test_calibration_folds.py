"""Cross-conformal calibration: every residual out of sample, nothing held out leaks in."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.errors import ConfigError
from slocast.core.synthetic import generate_lte
from slocast.models.baselines import Persistence
from slocast.models.xgboost_forecaster import XGBoostForecaster
from slocast.preprocess.stage import preprocess
from slocast.train.calibration import calibration_folds, out_of_fold
from slocast.train.stage import train_ensemble, train_family


@pytest.fixture(scope="module")
def data():
    return preprocess(generate_lte(3000, seed=5), None, PipelineConfig(calibration_blocks=2))


def _rows(ends: np.ndarray, window: int, horizon: int) -> set[int]:
    """Every row a set of windows reads (inputs and truth)."""
    return {int(r) for e in ends for r in range(e - window, e + horizon)}


@pytest.mark.parametrize("blocks", [0, 1, 2, 3])
def test_folds_cover_train_and_val_once(data, blocks):
    folds = calibration_folds(data, blocks)
    assert len(folds) == 1 + blocks
    assert folds[0].fit_ends is None
    np.testing.assert_array_equal(folds[0].held_out, data.ends("val"))
    held = np.concatenate([f.held_out for f in folds])
    expected = (
        data.ends("val")
        if blocks == 0
        else np.concatenate([data.ends(s) for s in ("train", "val")])
    )
    assert sorted(held.tolist()) == sorted(expected.tolist())
    assert not set(held.tolist()) & set(data.ends("test").tolist())


def test_fold_models_never_read_held_out_truth(data):
    window, horizon = data.config.window, data.config.horizon
    for fold in calibration_folds(data, 2)[1:]:
        truth_rows = {int(r) for e in fold.held_out for r in range(e, e + horizon)}
        assert not _rows(fold.fit_ends, window, horizon) & truth_rows
        # The purge drops only windows next to the block, and the fold keeps validation.
        assert fold.fit_ends.size >= data.ends("train").size - fold.held_out.size - 2 * window
        assert set(data.ends("val").tolist()) <= set(fold.fit_ends.tolist())
        assert not set(fold.fit_ends.tolist()) & set(data.ends("test").tolist())


def test_config_rejects_bad_block_count():
    with pytest.raises(ConfigError, match="calibration_blocks"):
        PipelineConfig(calibration_blocks=-1)


def test_xgboost_refit_keeps_the_budget_and_uses_only_its_rows(data):
    model = XGBoostForecaster(data.spec, {"eta": 0.3}, n_jobs=1)
    model.fit(data, seed=0)
    fold = calibration_folds(data, 2)[1]
    clone = model.refit(data, fold.fit_ends, seed=0)
    rounds = lambda m: [[b.num_boosted_rounds() for b in row] for row in m._models]  # noqa: E731
    assert rounds(clone) == rounds(model)
    ends = fold.held_out
    a = clone.predict(data.times, data.values, ends)
    b = model.predict(data.times, data.values, ends)
    assert not np.allclose(a, b), "the refit must be a different model, fitted on other rows"
    # Deterministic: the same rows and seed give the same model.
    again = model.refit(data, fold.fit_ends, seed=0)
    np.testing.assert_array_equal(again.predict(data.times, data.values, ends), a)


def test_out_of_fold_uses_the_served_model_on_validation(data):
    model = Persistence(data.spec)
    folds = calibration_folds(data, 2)
    oof = out_of_fold(data, model, folds, seed=0)
    assert np.all(np.diff(oof.ends) > 0)
    np.testing.assert_array_equal(oof.prediction, model.predict(data.times, data.values, oof.ends))
    own = model.predict(data.times, data.values, data.ends("val"))
    reused = out_of_fold(data, model, folds, seed=0, own_prediction=own)
    np.testing.assert_array_equal(reused.prediction, oof.prediction)


def test_calibration_uses_every_training_window(data):
    trained = train_family(data, "persistence")
    n_windows = data.ends("train").size + data.ends("val").size
    assert trained.bundle.calibration.n_calibration == n_windows
    assert trained.calibration_forecast.ends.size == n_windows
    only_val = preprocess(generate_lte(3000, seed=5), None, PipelineConfig(calibration_blocks=0))
    assert train_family(only_val, "persistence").bundle.calibration.n_calibration == (
        only_val.ends("val").size
    )


def test_ensemble_calibrates_on_its_members_out_of_fold_forecasts(data):
    members = {f: train_family(data, f) for f in ("persistence", "seasonal_naive")}
    ensemble = train_ensemble(data, members)
    weights = ensemble.bundle.forecaster.weights
    expected = sum(w * members[n].calibration_forecast.prediction for n, w in weights.items())
    np.testing.assert_allclose(ensemble.calibration_forecast.prediction, expected)
    assert ensemble.bundle.calibration.n_calibration == expected.shape[0]
