"""The preprocess stage: validated frames in, a split, fitted, content-addressed dataset out.

Pure logic (no storage, no events): :func:`preprocess` takes frames that
:mod:`slocast.adapters.datasets` validated and returns a :class:`ProcessedDataset`.

Rules, in order:
1. NaN rule: an empty cell takes the last observed value of its column (the first
   observed value for leading gaps); truth stays NaN for scoring.
2. Split (protocol A): with a test file, the training file's last
   ``val_fraction`` rows are validation and the test file is the test set;
   without one, the last ``test_fraction`` rows are test and the last
   ``val_fraction`` of the rest are validation. Chronological, never shuffled.
3. Caps and scalers are fitted on training rows only (:class:`FeatureSpec`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from slocast.adapters.datasets import UTC_OFFSETS, step_seconds
from slocast.core.config import PipelineConfig
from slocast.core.errors import DatasetError
from slocast.core.features import FeatureSpec, fill_missing
from slocast.core.schema import FEATURE_COLUMNS, HEADLINE_COLUMNS, TIME_COLUMN
from slocast.preprocess.dataset import SPLITS, ProcessedDataset

# Bump when the processing rules change, so old processed data is not reused.
PROCESSING_VERSION = "2"


def dataset_id(train: pd.DataFrame, test: pd.DataFrame | None, config: PipelineConfig) -> str:
    """SHA-256 of the rows (times and values), the configuration and the rules version."""
    digest = hashlib.sha256()
    digest.update(f"slocast-preprocess-v{PROCESSING_VERSION}".encode())
    for frame in (train, test):
        if frame is None:
            digest.update(b"<no test file>")
            continue
        digest.update(frame[TIME_COLUMN].to_numpy().astype("datetime64[ns]").tobytes())
        digest.update(
            np.ascontiguousarray(frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)).tobytes()
        )
    digest.update(config.digest().encode())
    return digest.hexdigest()


def min_rows(config: PipelineConfig) -> int:
    """Fewest rows a training file needs so every split holds windows."""
    per_split = config.window + config.horizon + 1
    return int(np.ceil(per_split / min(config.val_fraction, config.test_fraction))) + per_split


# Fewest test windows a run scores and promotes on. A headline NRMSE over N windows
# moves by about 1/sqrt(N) of itself from one sample of traffic to the next, so on a
# handful of windows one burst picks the champion; 100 keeps that near a tenth, and
# every file the tests and `make run` use holds several hundred or more. Checked
# here, so the Kafka services refuse such a dataset as `slocast run` does.
MIN_TEST_WINDOWS = 100
# Fewest observed truths per headline column on the validation split's target rows:
# early stopping, the persistence guard, blend weights and conformal offsets all
# read them (15 residuals once calibrated a champion's bounds without a word).
MIN_VAL_OBSERVED = 50


def preprocess(
    train: pd.DataFrame,
    test: pd.DataFrame | None,
    config: PipelineConfig,
    *,
    sources: dict | None = None,
) -> ProcessedDataset:
    """Split, fit the feature spec on training rows, and label every row."""
    if test is not None:
        _check_same_step(train, test, config, (sources or {}).get("test"))
    frames = [train] if test is None else [train, test]
    times = np.concatenate([f[TIME_COLUMN].to_numpy().astype("datetime64[ns]") for f in frames])
    if test is not None and len(test) and times[len(train)] <= times[len(train) - 1]:
        raise DatasetError(
            f"test data starts at {test[TIME_COLUMN].iloc[0]}, not after the training data "
            f"(ends {train[TIME_COLUMN].iloc[-1]}); the test set must follow in time"
        )
    raw = np.concatenate([f[list(FEATURE_COLUMNS)].to_numpy(np.float64) for f in frames])
    split = _split_labels(len(train), None if test is None else len(test), config)
    for code, name in enumerate(SPLITS):
        if (split == code).sum() < config.window + config.horizon:
            raise DatasetError(
                f"the {name} split has {(split == code).sum()} rows, fewer than window + horizon "
                f"({config.window + config.horizon}); provide more rows"
            )
    _check_headline_scorable(raw, split, config)
    train_rows = fill_missing(raw[split == 0])
    spec = FeatureSpec.fit(
        train_rows,
        window=config.window,
        horizon=config.horizon,
        step_seconds=step_seconds(train[TIME_COLUMN]),
        cap_quantile=config.cap_quantile,
    )
    dataset = ProcessedDataset.of(
        dataset_id=dataset_id(train, test, config),
        config=config,
        spec=spec,
        times=times,
        raw=raw,
        split=split,
        sources=sources or {},
    )
    _check_test_windows(dataset)
    return dataset


def _check_test_windows(dataset: ProcessedDataset) -> None:
    """Refuse a test set too small to score models and promote one (MIN_TEST_WINDOWS)."""
    windows = int(dataset.ends("test").size)
    if windows >= MIN_TEST_WINDOWS:
        return
    config = dataset.config
    rows = MIN_TEST_WINDOWS + config.window + config.horizon - 1
    test = dataset.sources.get("test")
    if test:
        where = f"{test}: the test file gives {windows} test window(s)"
        fix = f"give a test file of at least {rows} rows"
    else:
        where = (
            f"{dataset.sources.get('train')}: its last {config.test_fraction:.0%}, held out "
            f"as test, gives {windows} test window(s)"
        )
        fix = "give more rows or a longer --test-data file"
    raise DatasetError(
        f"{where}; at least {MIN_TEST_WINDOWS} are needed to score the models and "
        f"promote a champion: {fix}"
    )


def _check_same_step(
    train: pd.DataFrame, test: pd.DataFrame, config: PipelineConfig, source: str | None
) -> None:
    """Refuse a test file on another time step: the features (lags, calendar, the
    seasonal period in rows) mean what they meant in training only on the same grid."""
    offsets = (train.attrs.get(UTC_OFFSETS), test.attrs.get(UTC_OFFSETS))
    if None not in offsets and offsets[0] != offsets[1]:
        with_offsets = "the training file's" if offsets[0] else "the test file's"
        raise DatasetError(
            f"{source or 'test data'}: {with_offsets} timestamps carry UTC offsets and the "
            "other file's do not, so one of them would be read an offset away from the "
            "other; give both files offsets, or neither"
        )
    train_step, test_step = step_seconds(train[TIME_COLUMN]), step_seconds(test[TIME_COLUMN])
    if abs(test_step - train_step) > config.spacing_tolerance * train_step:
        raise DatasetError(
            f"{source or 'test data'}: test file step {test_step:g}s differs from training "
            f"file step {train_step:g}s; resample the test file onto the training file's step"
        )


def _check_headline_scorable(raw: np.ndarray, split: np.ndarray, config: PipelineConfig) -> None:
    """Refuse data whose headline NRMSE (RMSE / mean truth) is undefined where it is scored.

    Validation ranks and guards the families and test scores them; a headline column
    whose observed truth there averages 0 (or less) would make every NRMSE NaN or
    infinite and every decision meaningless, and one observed on a handful of rows
    would decide on a handful of residuals (the windows are counted whether their
    truth is observed or not). The training split needs traffic too: a column that
    is 0 (or empty) there teaches nothing. Only target rows of windows count.
    """
    first = config.window
    least = {1: MIN_VAL_OBSERVED, 2: MIN_TEST_WINDOWS}
    for code, name in ((0, "train"), (1, "val"), (2, "test")):
        rows = np.flatnonzero(split == code)[first:]
        for column in HEADLINE_COLUMNS:
            truth = raw[rows, FEATURE_COLUMNS.index(column)]
            observed = truth[~np.isnan(truth)]
            if observed.size == 0 or observed.mean() <= 0:
                raise DatasetError(
                    f"column {column!r} averages {observed.mean() if observed.size else 'nothing'} "
                    f"over the {name} split's target rows: protocol A's NRMSE (RMSE / mean) is "
                    "undefined there; a site needs traffic in down and up"
                )
            # (a split with too few rows at all is named by the window checks)
            needed = least.get(code, 0)
            if observed.size < needed <= rows.size:
                raise DatasetError(
                    f"column {column!r} is observed on {observed.size} of the {name} split's "
                    f"{rows.size} target rows; at least {needed} are needed to score "
                    "and calibrate on it: give a file with fewer empty cells or gap rows"
                )


def _split_labels(n_train: int, n_test: int | None, config: PipelineConfig) -> np.ndarray:
    if n_test is None:
        n_test = int(round(n_train * config.test_fraction))
        n_fit = n_train - n_test
    else:
        n_fit = n_train
    n_val = int(round(n_fit * config.val_fraction))
    return np.concatenate(
        [
            np.zeros(n_fit - n_val, np.int8),
            np.ones(n_val, np.int8),
            np.full(n_test, 2, np.int8),
        ]
    )
