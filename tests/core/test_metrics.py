"""Metric definitions, checked by hand on small arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from slocast.core import metrics


def test_nrmse_is_rmse_over_mean_of_truth():
    y = np.array([[1.0, 10.0], [3.0, 30.0]])
    p = np.array([[2.0, 10.0], [2.0, 20.0]])
    rmse = np.array([1.0, np.sqrt(50.0)])
    np.testing.assert_allclose(metrics.rmse(y, p), rmse)
    np.testing.assert_allclose(metrics.nrmse(y, p), rmse / np.array([2.0, 20.0]))
    np.testing.assert_allclose(metrics.mae(y, p), [1.0, 5.0])


def test_nrmse_of_a_column_that_is_always_zero_is_nan_without_a_warning():
    y = np.array([[1.0, 0.0], [3.0, 0.0]])
    p = np.array([[2.0, 0.0], [2.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = metrics.nrmse(y, p)
    assert got[0] == pytest.approx(0.5) and np.isnan(got[1])
    assert isinstance(metrics.nrmse(y[:, 0], p[:, 0]), float)


def test_nan_truth_is_excluded_not_zeroed():
    y = np.array([[1.0], [np.nan], [3.0]])
    p = np.array([[1.0], [100.0], [1.0]])
    assert metrics.rmse(y, p)[0] == pytest.approx(np.sqrt(2.0))
    assert metrics.coverage(y, p + 0.5)[0] == pytest.approx(0.5)


def test_coverage_width_pinball():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    upper = np.array([1.0, 1.0, 5.0, 5.0])
    assert metrics.coverage(y, upper) == pytest.approx(0.75)
    assert metrics.mean_width(np.zeros(4), upper) == pytest.approx(3.0)
    # under-prediction costs q per unit, over-prediction (1-q)
    assert metrics.pinball_loss(np.array([10.0]), np.array([8.0]), 0.9) == pytest.approx(1.8)
    assert metrics.pinball_loss(np.array([10.0]), np.array([12.0]), 0.9) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(np.zeros(3), np.zeros(4))


def test_persistence_on_poblesec_matches_the_paper_setup(lte_dir):
    """Protocol A check: persistence headline NRMSE 0.983 on PobleSec's test windows."""
    from slocast.adapters.datasets import load_lte
    from slocast.core.config import PipelineConfig
    from slocast.evaluate.scoring import score
    from slocast.models.baselines import Persistence
    from slocast.models.bundle import ModelBundle
    from slocast.preprocess.stage import min_rows, preprocess
    from slocast.train.stage import train_family

    config = PipelineConfig()
    train = load_lte(lte_dir / "PobleSec.csv", min_rows=min_rows(config))
    test = load_lte(lte_dir / "PobleSec_test.csv", min_rows=11)
    data = preprocess(train, test, config)
    assert data.ends("test").size == 3972
    trained = train_family(data, "persistence")
    evaluation = score(ModelBundle(Persistence(data.spec), trained.bundle.calibration), data)
    assert evaluation.nrmse["avg"] == pytest.approx(0.983, abs=0.003)
