"""ProphetForecaster on small synthetic data: accuracy, persistence, serving shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.metrics import nrmse
from slocast.core.synthetic import generate_lte
from slocast.models.baselines import Persistence
from slocast.models.prophet_forecaster import ProphetForecaster
from slocast.preprocess.dataset import ProcessedDataset
from slocast.preprocess.stage import preprocess


def _dataset(rows: int, horizon: int) -> ProcessedDataset:
    return preprocess(generate_lte(rows, seed=1), None, PipelineConfig(horizon=horizon))


@pytest.fixture(scope="module")
def fitted() -> tuple[ProcessedDataset, ProphetForecaster]:
    data = _dataset(3000, horizon=1)
    model = ProphetForecaster(data.spec)
    model.fit(data, seed=0)
    return data, model


def test_beats_persistence_on_held_out_windows(fitted: tuple) -> None:
    data, model = fitted
    ends = data.ends("test")
    truth = data.truth(ends)[:, 0]
    ours = nrmse(truth, model.predict(data.times, data.values, ends)[:, 0])
    naive = nrmse(truth, Persistence(data.spec).predict(data.times, data.values, ends)[:, 0])
    assert ours[3:].mean() < 0.95 * naive[3:].mean()


def test_save_load_round_trip_is_identical_and_pickle_free(fitted: tuple, tmp_path: Path) -> None:
    data, model = fitted
    files = model.save(tmp_path)
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    assert all(name.endswith(".json") for name in files)
    loaded = ProphetForecaster.load(tmp_path, data.spec)
    ends = data.ends("val")
    np.testing.assert_array_equal(
        loaded.predict(data.times, data.values, ends), model.predict(data.times, data.values, ends)
    )


def test_predictions_vary_and_serving_call_works(fitted: tuple) -> None:
    data, model = fitted
    pred = model.predict(data.times, data.values, data.ends("test"))
    assert np.all(np.isfinite(pred))
    assert np.all(pred.std(axis=0) > 0)
    serve = model.predict(data.times, data.values, np.array([len(data.values)]))
    assert serve.shape == (1, 1, 5) and np.all(np.isfinite(serve))


def test_uses_only_the_window(fitted: tuple) -> None:
    # Changing rows at or after the end must not change the forecast.
    data, model = fitted
    ends = data.ends("val")[:20]
    future = data.values.copy()
    future[ends[0] :] *= 3.0
    np.testing.assert_array_equal(
        model.predict(data.times, future, ends[:1]),
        model.predict(data.times, data.values, ends[:1]),
    )


def test_horizon_above_one_shapes() -> None:
    data = _dataset(1500, horizon=3)
    model = ProphetForecaster(data.spec)
    model.fit(data, seed=0)
    ends = data.ends("test")
    assert model.predict(data.times, data.values, ends).shape == (ends.size, 3, 5)
    assert model.predict(data.times, data.values, np.array([len(data.values)])).shape == (1, 3, 5)
