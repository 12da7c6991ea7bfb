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


def test_relative_mode_is_chosen_on_validation_after_a_level_drop(tmp_path: Path) -> None:
    from slocast.core.schema import TARGET_INDEX

    frame = generate_lte(3000, seed=1)
    frame.loc[int(0.6 * len(frame)) :, "up"] *= 0.1  # from the validation split on
    data = preprocess(frame, None, PipelineConfig())
    model = ProphetForecaster(data.spec)
    report = model.fit(data, seed=0)
    relative, absolute = report.metrics["val_nrmse_relative"], report.metrics["val_nrmse_absolute"]
    assert model.relative is (relative < absolute) and model.relative, (relative, absolute)
    assert report.params["relative"] is True
    # Relative forecasts follow the window's level: the series x10 forecasts ~x10 (the
    # fixed level floor keeps it from being exact).
    ends = data.ends("test")
    pred = model.predict(data.times, data.values, ends)
    scaled = data.values.copy()
    scaled[:, list(TARGET_INDEX)] *= 10.0
    np.testing.assert_allclose(
        model.predict(data.times, scaled, ends), 10.0 * pred, rtol=0.05, atol=1e-6
    )
    model.save(tmp_path)
    loaded = ProphetForecaster.load(tmp_path, data.spec)
    assert loaded.relative is True
    np.testing.assert_array_equal(loaded.predict(data.times, data.values, ends), pred)


def test_bundles_saved_before_relative_mode_load_as_absolute(fitted: tuple, tmp_path: Path) -> None:
    import json

    data, model = fitted
    model.save(tmp_path)
    state = json.loads((tmp_path / "prophet.json").read_text())
    state.pop("relative")
    (tmp_path / "prophet.json").write_text(json.dumps(state))
    assert ProphetForecaster.load(tmp_path, data.spec).relative is False
