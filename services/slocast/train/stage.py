"""The trainer stage: fit one family, calibrate it on validation, package a bundle.

Pure logic: data in, a :class:`TrainedModel` out. Tracking and registration are
the runner's job (:mod:`slocast.train.tracking`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slocast.core.conformal import Calibration
from slocast.core.features import predicted_change, residual_scale
from slocast.core.metrics import nrmse
from slocast.core.schema import HEADLINE_COLUMNS, TARGET_COLUMNS
from slocast.models import family_class
from slocast.models.base import FitReport, Forecaster, Progress
from slocast.models.bundle import ModelBundle
from slocast.preprocess.dataset import ProcessedDataset
from slocast.train.calibration import OutOfFold, calibration_folds, out_of_fold


class TrainingError(RuntimeError):
    """A model trained but is unusable (non-finite or constant predictions)."""


class NoEligibleMembers(TrainingError):
    """The ensemble has nothing to combine: every member fails the persistence guard."""


@dataclass
class TrainedModel:
    bundle: ModelBundle
    report: FitReport
    val_metrics: dict[str, float]
    val_prediction: np.ndarray
    # Forecasts of every calibration window by a model that never trained on it
    # (the ensemble combines its members' instead of refitting them).
    calibration_forecast: OutOfFold
    train_seconds: float
    calibration_seconds: float

    @property
    def family(self) -> str:
        return self.bundle.family


def train_family(
    data: ProcessedDataset,
    family: str,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainedModel:
    """Fit ``family`` on the train split; calibrate conformal offsets out of sample."""
    started = time.perf_counter()
    model = family_class(family)(data.spec)
    report = model.fit(data, seed=seed, progress=progress)
    return calibrate(data, model, report, seconds=time.perf_counter() - started, seed=seed)


def train_ensemble(
    data: ProcessedDataset,
    members: dict[str, TrainedModel],
    *,
    seed: int = 0,
    family: str = "ensemble",
) -> TrainedModel:
    """The ensemble (or blend) of already-trained members, weighted on validation.

    Nothing is refitted.
    """
    started = time.perf_counter()
    model, report = family_class(family).from_members(
        data, {name: m.bundle.forecaster for name, m in members.items()}
    )
    seconds = (
        time.perf_counter() - started + sum(members[name].train_seconds for name in model.weights)
    )
    members_used = [members[name] for name in model.weights]
    combined = sum(
        model.weights[name] * members[name].calibration_forecast.prediction
        for name in model.weights
    )
    forecast = OutOfFold(members_used[0].calibration_forecast.ends, combined)
    return calibrate(data, model, report, seconds=seconds, seed=seed, forecast=forecast)


def calibrate(
    data: ProcessedDataset,
    model: Forecaster,
    report: FitReport,
    *,
    seconds: float,
    seed: int,
    forecast: OutOfFold | None = None,
) -> TrainedModel:
    """Check the fitted model's validation forecasts and derive its conformal offsets.

    Residuals come from validation and from cross-fitted blocks of the train split
    (:mod:`slocast.train.calibration`); ``forecast`` supplies them ready-made.
    """
    family = model.family
    ends = data.ends("val")
    prediction = model.predict(data.times, data.values, ends)
    truth = data.truth(ends)
    check_predictions(family, prediction, truth)
    started = time.perf_counter()
    if forecast is None:
        folds = calibration_folds(data, data.config.calibration_blocks)
        forecast = out_of_fold(data, model, folds, seed=seed, own_prediction=prediction)
    check_predictions(family, forecast.prediction, data.truth(forecast.ends))
    scale = residual_scale(data.spec, data.values, forecast.ends)
    n = forecast.ends.size
    calibration = Calibration.fit(
        data.truth(forecast.ends),
        forecast.prediction,
        data.config.quantiles,
        scale=scale,
        group_by=predicted_change(
            data.spec, forecast.prediction, data.values, forecast.ends, scale
        ),
        bins=change_bins(n),
    )
    calibration_seconds = time.perf_counter() - started
    bundle = ModelBundle(
        forecaster=model,
        calibration=calibration,
        info={
            "family": family,
            "dataset_id": data.dataset_id,
            "seed": seed,
            "params": report.params,
            "calibration_blocks": data.config.calibration_blocks,
        },
    )
    return TrainedModel(
        bundle,
        report,
        validation_metrics(truth, prediction),
        prediction,
        forecast,
        seconds + calibration_seconds,
        calibration_seconds,
    )


# Mondrian bins of the predicted change (features.predicted_change): as many as
# keep >= 600 residuals each, at most 5. Chosen by a backtest inside the training
# file (calibrate on cross-fitted train blocks, score on validation; PobleSec,
# GRU/LSTM x 3 seeds x 5 targets): P90 coverage within [0.87, 0.93] for 25/30
# cells pooled, 30/30 with 3-5 bins. See docs/calibration.md.
ROWS_PER_CHANGE_BIN = 600
MAX_CHANGE_BINS = 5


def change_bins(n_calibration: int) -> int:
    """Number of predicted-change bins for ``n_calibration`` residuals."""
    return max(1, min(MAX_CHANGE_BINS, n_calibration // ROWS_PER_CHANGE_BIN))


def check_predictions(family: str, prediction: np.ndarray, truth: np.ndarray) -> None:
    """Refuse a model whose output cannot be a forecast: wrong shape, NaN, or constant.

    A stub (or a training loop that silently did nothing) typically returns a
    constant; real forecasts of a varying series vary.
    """
    if prediction.shape != truth.shape:
        raise TrainingError(
            f"{family}: predictions have shape {prediction.shape}, expected {truth.shape}"
        )
    if not np.isfinite(prediction).all():
        raise TrainingError(f"{family}: predictions contain NaN or infinity")
    spread = np.std(prediction, axis=0)
    truth_spread = np.nanstd(truth, axis=0)
    # Relative to the truth's own spread (scale-free: a site in tiny units is no
    # more constant than one in bytes).
    flat = (spread <= 1e-6 * truth_spread) & (truth_spread > 0)
    if flat.any():
        step, target = np.argwhere(flat)[0]
        raise TrainingError(
            f"{family}: constant predictions for {TARGET_COLUMNS[target]} (step {step + 1}); the model did not learn"
        )


def validation_metrics(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    step1 = nrmse(truth[:, 0], prediction[:, 0])
    metrics = {f"val_nrmse_{c}": float(v) for c, v in zip(TARGET_COLUMNS, step1, strict=True)}
    metrics["val_nrmse_avg"] = float(np.mean([metrics[f"val_nrmse_{c}"] for c in HEADLINE_COLUMNS]))
    return metrics
