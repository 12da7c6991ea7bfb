"""ProphetForecaster on small synthetic data: accuracy, persistence, serving shapes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from headlines import headlines

from slocast.core.config import PipelineConfig
from slocast.core.schema import FEATURE_COLUMNS
from slocast.core.synthetic import generate_lte
from slocast.models.prophet_forecaster import ABSOLUTE, CHANGE, STATE_FILE, ProphetForecaster
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
    ours, naive = headlines(fitted[1], fitted[0])
    assert ours < 0.95 * naive


def _up_shifted_from_test(data: ProcessedDataset, factor: float) -> ProcessedDataset:
    j = FEATURE_COLUMNS.index("up")
    start = data.rows("test")[0]
    raw, values = data.raw.copy(), data.values.copy()
    raw[start:, j] *= factor
    values[start:, j] *= factor
    return replace(data, raw=raw, values=values)


def test_a_level_shift_after_the_fit_is_forecast_from_the_new_level(fitted: tuple) -> None:
    """`up` x0.1 from the first test row on, a level the fit never saw: forecasts of
    the change from the last value follow it and still beat persistence; a model of
    absolute values (as saved before) keeps forecasting the old level."""
    data, model = fitted
    shifted = _up_shifted_from_test(data, 0.1)
    ours, naive = headlines(model, shifted)
    assert ours < 0.95 * naive
    absolute = ProphetForecaster(data.spec, target=ABSOLUTE)
    absolute.fit(data, seed=0)
    assert headlines(absolute, data)[0] < 0.95 * naive  # a fair model without the shift
    assert headlines(absolute, shifted)[0] > 1.5 * naive


def test_models_saved_before_relative_changes_load_as_fitted(tmp_path: Path) -> None:
    data = _dataset(1500, horizon=1)
    model = ProphetForecaster(data.spec, target=ABSOLUTE)
    model.fit(data, seed=0)
    model.save(tmp_path)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["regressors"] == ["last", "window_mean"]
    del state["target"]  # as written before the field existed
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    loaded = ProphetForecaster.load(tmp_path, data.spec)
    assert loaded.target == ABSOLUTE
    ends = data.ends("val")
    np.testing.assert_array_equal(
        loaded.predict(data.times, data.values, ends), model.predict(data.times, data.values, ends)
    )
    assert ProphetForecaster(data.spec).target == CHANGE  # what new fits use


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
