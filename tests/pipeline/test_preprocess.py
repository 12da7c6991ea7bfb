"""Preprocessing rules: split, NaN rule, train-only fitting, windowing, content hash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slocast.adapters.storage import LocalStore
from slocast.core.config import PipelineConfig
from slocast.core.digests import sha256_bytes
from slocast.core.errors import DatasetError
from slocast.core.features import (
    FeatureSpec,
    fill_missing,
    gather_targets,
    gather_windows,
    target_times,
    window_ends,
)
from slocast.core.schema import FEATURE_COLUMNS, TARGET_INDEX
from slocast.core.synthetic import generate_lte
from slocast.preprocess.stage import preprocess
from slocast.preprocess.store import has_dataset, load_dataset, save_dataset


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate_lte(2000, seed=3)


def test_split_is_chronological_with_protocol_fractions(frame):
    data = preprocess(frame, None, PipelineConfig())
    n_test = round(2000 * 0.2)
    n_val = round((2000 - n_test) * 0.2)
    assert data.rows("test").size == n_test and data.rows("val").size == n_val
    assert data.rows("train").max() < data.rows("val").min() < data.rows("test").min()
    # Windows lie wholly inside their split: protocol A's "every window inside the test file".
    ends = data.ends("test")
    assert ends.min() - data.config.window == data.rows("test").min()
    assert ends.size == n_test - data.config.window


def test_separate_test_file_is_the_test_set(frame):
    train, test = frame.iloc[:1500], frame.iloc[1500:]
    data = preprocess(train, test, PipelineConfig())
    assert data.rows("test").size == 500
    assert data.ends("test").size == 490  # i = 10 .. n-1
    assert data.rows("val").size == 300
    with pytest.raises(DatasetError, match="must follow in time"):
        preprocess(test, train, PipelineConfig())


@pytest.mark.parametrize("test_step", [60, 240, 600])
def test_a_test_file_on_another_step_is_refused(frame, test_step):
    """Lags, calendar and seasonal features only mean what they meant in training on
    the training file's grid (here 120s)."""
    test = generate_lte(500, seed=4)
    test["time"] = frame["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 501) * test_step, "s")
    with pytest.raises(
        DatasetError,
        match=rf"^Cell_test.csv: test file step {test_step}s differs from training file step 120s",
    ):
        preprocess(frame, test, PipelineConfig(), sources={"test": "Cell_test.csv"})
    # Jitter within the spacing tolerance is the same step.
    test["time"] = frame["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 501) * 125, "s")
    assert preprocess(frame, test, PipelineConfig()).rows("test").size == 500


def test_scaler_and_caps_fitted_on_training_rows_only(frame):
    data = preprocess(frame, None, PipelineConfig())
    tampered = frame.copy()
    later = tampered.index >= data.rows("val").min()
    tampered.loc[later, "down"] *= 1000.0  # only validation and test rows change
    other = preprocess(tampered, None, PipelineConfig())
    assert other.spec == data.spec
    train_rows = fill_missing(data.raw[data.rows("train")])
    expected = FeatureSpec.fit(
        train_rows, window=10, horizon=1, step_seconds=120, cap_quantile=0.999
    )
    assert data.spec == expected


def test_zero_variance_column_scales_to_zero_not_nan(frame):
    frame["mcs_down"] = 7.0
    data = preprocess(frame, None, PipelineConfig())
    j = FEATURE_COLUMNS.index("mcs_down")
    assert data.spec.scale[j] == 1.0
    scaled = data.spec.scale_inputs(data.values)
    assert np.isfinite(scaled).all()
    assert np.allclose(scaled[:, j], 0.0)


def test_nan_rule_fills_forward_and_keeps_truth_missing():
    values = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [4.0, 5.0]])
    filled = fill_missing(values)
    assert filled.tolist() == [[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [4.0, 5.0]]
    frame = generate_lte(600, seed=0, nan_cells=0)
    frame.loc[300, "rnti_count"] = np.nan
    data = preprocess(frame, None, PipelineConfig())
    truth = data.truth(np.array([300]))
    assert np.isnan(truth[0, 0, 0])  # rnti_count is target 0: never imputed for scoring
    assert data.values[300, FEATURE_COLUMNS.index("rnti_count")] == frame.loc[299, "rnti_count"]


def test_windowing_equals_naive_reference():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, len(FEATURE_COLUMNS)))
    times = np.datetime64("2020-01-01T00:00") + np.arange(50) * np.timedelta64(120, "s")
    window, horizon = 4, 3
    ends = window_ends(50, window, horizon)
    windows = gather_windows(values, ends, window)
    targets = gather_targets(values, ends, horizon)
    when = target_times(times, ends, horizon, 120)
    for n, end in enumerate(ends):
        assert np.array_equal(
            windows[n], np.stack([values[end - window + i] for i in range(window)])
        )
        for h in range(horizon):
            assert np.array_equal(targets[n, h], values[end + h][list(TARGET_INDEX)])
            assert when[n, h] == times[end - 1] + (h + 1) * np.timedelta64(120, "s")
    assert ends[0] == window and ends[-1] == 50 - horizon
    # A serving-style end one past the data is allowed for inputs.
    assert gather_windows(values, np.array([50]), window).shape == (1, window, len(FEATURE_COLUMNS))


def test_dataset_id_depends_on_data_and_config(frame):
    a = preprocess(frame, None, PipelineConfig())
    assert preprocess(frame.copy(), None, PipelineConfig()).dataset_id == a.dataset_id
    changed = frame.copy()
    changed.loc[10, "up"] += 1.0
    assert preprocess(changed, None, PipelineConfig()).dataset_id != a.dataset_id
    assert preprocess(frame, None, PipelineConfig(window=12)).dataset_id != a.dataset_id


def test_store_round_trip(tmp_path, frame):
    store = LocalStore(tmp_path)
    data = preprocess(frame, None, PipelineConfig())
    assert not has_dataset(store, data.dataset_id)
    save_dataset(store, data)
    assert has_dataset(store, data.dataset_id)
    back = load_dataset(store, data.dataset_id)
    assert back.spec == data.spec and back.config == data.config
    np.testing.assert_array_equal(back.raw, data.raw)
    np.testing.assert_array_equal(back.times, data.times)
    np.testing.assert_array_equal(back.split, data.split)


def test_a_stored_dataset_is_read_only_under_its_own_hashes(tmp_path, frame):
    """Trainers and the evaluator read a dataset named by an event: its metadata must
    match the hash the event claims and name that dataset, its rows the hash the
    metadata records; a corrupt file is a DatasetError (permanent), not a crash."""
    store = LocalStore(tmp_path)
    data = preprocess(frame, None, PipelineConfig())
    save_dataset(store, data)
    prefix = f"datasets/{data.dataset_id}"
    metadata = store.get_bytes(f"{prefix}/metadata.json")
    assert (
        load_dataset(store, data.dataset_id, sha256_bytes(metadata)).dataset_id == data.dataset_id
    )
    with pytest.raises(DatasetError, match="does not match the SHA-256 the event claims"):
        load_dataset(store, data.dataset_id, "e" * 64)
    # A copy under another id is not that dataset.
    other = "b" * 64
    store.put_bytes(f"datasets/{other}/metadata.json", metadata)
    store.put_bytes(f"datasets/{other}/data.parquet", store.get_bytes(f"{prefix}/data.parquet"))
    with pytest.raises(DatasetError, match=f"its metadata names dataset {data.dataset_id[:12]}"):
        load_dataset(store, other)
    rows = store.get_bytes(f"{prefix}/data.parquet")
    store.put_bytes(f"{prefix}/data.parquet", rows[:-100])
    with pytest.raises(DatasetError, match="data.parquet does not match its metadata"):
        load_dataset(store, data.dataset_id)
    store.put_bytes(f"{prefix}/metadata.json", b"{not json")
    with pytest.raises(DatasetError, match="unreadable metadata.json"):
        load_dataset(store, data.dataset_id)


@pytest.mark.parametrize("column", ["down", "up"])
def test_headline_column_without_traffic_where_scored_is_refused(frame, column):
    test = generate_lte(500, seed=4)
    test["time"] = frame["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 501) * 120, "s")
    quiet = test.copy()
    quiet[column] = 0.0
    with pytest.raises(DatasetError, match=f"column '{column}' averages 0.0 over the test split"):
        preprocess(frame, quiet, PipelineConfig())
    # The first `window` rows of a split are only ever inputs: no traffic there is fine.
    quiet = test.copy()
    quiet.loc[: PipelineConfig().window - 1, column] = 0.0
    preprocess(frame, quiet, PipelineConfig())
    # Validation (the last 20% of the training file) ranks the families: same rule.
    silent = frame.copy()
    silent.loc[1600:, column] = np.nan
    with pytest.raises(DatasetError, match=f"column '{column}' averages nothing over the val"):
        preprocess(silent, test, PipelineConfig())
    summary = preprocess(frame, test, PipelineConfig()).summary()
    assert summary["empty_rows"] == {"train": 0, "val": 0, "test": 0}


@pytest.mark.parametrize("column", ["down", "up"])
def test_headline_truth_observed_on_a_handful_of_rows_is_refused(frame, column):
    """Windows are counted whether their truth is observed or not: a test or
    validation split with 15 observed truths once scored, calibrated and promoted
    without a word; a training split without traffic trained a model of nothing."""
    test = generate_lte(500, seed=4)
    test["time"] = frame["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 501) * 120, "s")
    sparse = test.copy()
    sparse.loc[~sparse.index.isin(range(150, 165)), column] = np.nan
    with pytest.raises(DatasetError, match=f"'{column}' is observed on 15 of the test split's"):
        preprocess(frame, sparse, PipelineConfig())
    n_val = int((frame.shape[0]) * 0.2)
    sparse = frame.copy()
    sparse.loc[sparse.index[-n_val:-15], column] = np.nan
    with pytest.raises(DatasetError, match=f"'{column}' is observed on .* of the val split's"):
        preprocess(sparse, test, PipelineConfig())
    quiet = frame.copy()
    quiet.loc[: frame.shape[0] - n_val - 1, column] = 0.0
    with pytest.raises(DatasetError, match=f"'{column}' averages 0.0 over the train split"):
        preprocess(quiet, test, PipelineConfig())


def test_forecast_floor_is_zero_or_the_training_minimum():
    frame = generate_lte(600, seed=6)
    spec = preprocess(frame, None, PipelineConfig()).spec
    assert spec.target_floor == (0.0,) * len(spec.targets)
    out = np.array([[[-5.0, 0.5, -1e-9, 3.0, -2.0]]])
    np.testing.assert_array_equal(spec.floor_forecast(out.copy()), np.maximum(out, 0.0))
    # A file with negative values keeps them reachable: the floor is their minimum.
    frame["rb_up"] = frame["rb_up"] - 2 * frame["rb_up"].max()
    spec = preprocess(frame, None, PipelineConfig()).spec
    k = spec.targets.index("rb_up")
    assert spec.target_floor[k] == pytest.approx(
        frame["rb_up"].iloc[: spec_train_rows(frame)].min()
    )
    # Specs saved before the floor load without it and leave forecasts alone.
    legacy = {k: v for k, v in spec.to_dict().items() if k != "target_floor"}
    old = FeatureSpec.from_dict(legacy)
    assert old.target_floor is None
    np.testing.assert_array_equal(old.floor_forecast(out.copy()), out)


def spec_train_rows(frame: pd.DataFrame) -> int:
    n_fit = len(frame) - round(len(frame) * 0.2)
    return n_fit - round(n_fit * 0.2)


def test_a_reused_dataset_reports_this_runs_files(tmp_path):
    """The same rows under a new file name reuse the processed dataset, and the
    report names the new files (it named the first run's)."""
    from slocast.adapters.storage import LocalStore
    from slocast.runtime.inprocess import prepare_dataset
    from slocast.settings import RunSettings

    frame = generate_lte(1500, seed=1)
    frame.to_csv(tmp_path / "first.csv", index=False)
    frame.to_csv(tmp_path / "second.csv", index=False)
    store = LocalStore(tmp_path / "artifacts")
    first, reused = prepare_dataset(RunSettings(data=tmp_path / "first.csv", home=tmp_path), store)
    assert not reused and first.sources["train"].endswith("first.csv")
    second, reused = prepare_dataset(
        RunSettings(data=tmp_path / "second.csv", home=tmp_path), store
    )
    assert reused and second.dataset_id == first.dataset_id
    assert second.sources["train"].endswith("second.csv")
