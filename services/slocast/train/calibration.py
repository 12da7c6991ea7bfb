"""Where conformal residuals come from: validation, optionally plus cross-fitted blocks.

Protocol A calibrates on validation alone: the last 20 % of the training file, a
few days. When those days are calmer or busier than the days served later, the
offsets are off for all of them. ``PipelineConfig.calibration_blocks > 0``
(``slocast run --calibration-blocks N``) widens the sample to the whole training
file while keeping every residual out of sample (cross-conformal over time blocks):

- validation windows: residuals of the served model itself (it never trained on them);
- each of ``blocks`` contiguous blocks of the train split: residuals of a model
  refitted on every other window of the file (the rest of train plus validation),
  with the training budget the served model chose on validation
  (:meth:`Forecaster.refit`), so no held-out row steers its own forecast.

Windows whose rows touch a held-out block's target rows are purged from that
fold's training set, so no held-out truth leaks in through overlapping windows.
The refitted models only produce residuals; they are never served. On PobleSec
this did not make test coverage consistently better than validation alone
(``make bench-calibration``, docs/calibration.md), so it is opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slocast.models.base import Forecaster
from slocast.preprocess.dataset import ProcessedDataset


@dataclass(frozen=True)
class CalibrationFold:
    """Window ends to take residuals on, and the windows their model was fitted on.

    ``fit_ends`` is None for the served model's own held-out split (validation).
    """

    held_out: np.ndarray
    fit_ends: np.ndarray | None


def calibration_folds(data: ProcessedDataset, blocks: int) -> list[CalibrationFold]:
    """Validation, then ``blocks`` contiguous blocks of the train split (0: validation only)."""
    val, train = data.ends("val"), data.ends("train")
    folds = [CalibrationFold(val, None)]
    if blocks == 0 or train.size == 0:
        return folds
    window, horizon = data.config.window, data.config.horizon
    for part in np.array_split(train, blocks):
        if part.size == 0:
            continue
        # A window ending at e reads rows [e - window, e + horizon); the block's
        # truth occupies rows [first, last + horizon). Keep windows clear of it.
        first, last = int(part[0]), int(part[-1])
        clear = (train + horizon <= first) | (train - window >= last + horizon)
        folds.append(CalibrationFold(part, np.concatenate([train[clear], val])))
    return folds


@dataclass(frozen=True)
class OutOfFold:
    """Forecasts of calibration windows, each made by a model that never trained on it."""

    ends: np.ndarray
    prediction: np.ndarray


def out_of_fold(
    data: ProcessedDataset,
    model: Forecaster,
    folds: list[CalibrationFold],
    *,
    seed: int,
    own_prediction: np.ndarray | None = None,
) -> OutOfFold:
    """Forecast every fold's held-out windows (refitting ``model`` where it saw them).

    ``own_prediction``: the model's forecasts of the fold it never trained on
    (validation), when the caller already has them.
    """
    ends, predictions = [], []
    for fold in folds:
        ends.append(fold.held_out)
        if fold.fit_ends is None and own_prediction is not None:
            predictions.append(own_prediction)
            continue
        predictor = model if fold.fit_ends is None else model.refit(data, fold.fit_ends, seed=seed)
        predictions.append(predictor.predict(data.times, data.values, fold.held_out))
    all_ends = np.concatenate(ends)
    order = np.argsort(all_ends, kind="stable")
    return OutOfFold(all_ends[order], np.concatenate(predictions)[order])
