"""Scoring a model on held-out windows (protocol A metrics, original units)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from slocast.core import metrics
from slocast.core.schema import HEADLINE_COLUMNS, TARGET_COLUMNS
from slocast.models.bundle import ModelBundle
from slocast.preprocess.dataset import ProcessedDataset


@dataclass
class Evaluation:
    """Test metrics of one model; the shape ``report.json`` publishes."""

    family: str
    nrmse: dict[str, float]
    mae: dict[str, float]
    rmse: dict[str, float]
    coverage: dict[str, dict[str, float]]
    width: dict[str, dict[str, float]]
    nrmse_by_step: list[float] = field(default_factory=list)
    predict_seconds: float = 0.0
    # The persistence guard's verdict on validation (slocast.models.guard), for candidates.
    guard: dict | None = None

    @property
    def excluded(self) -> bool:
        return bool(self.guard and self.guard.get("excluded"))

    @property
    def headline(self) -> float:
        return self.nrmse["avg"]

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "nrmse": self.nrmse,
            "mae": self.mae,
            "rmse": self.rmse,
            "coverage": self.coverage,
            "width": self.width,
            "nrmse_by_step": self.nrmse_by_step,
            "predict_seconds": self.predict_seconds,
            **({"guard": self.guard} if self.guard is not None else {}),
        }

    def flat_metrics(self) -> dict[str, float]:
        out = {f"nrmse_{k}": v for k, v in self.nrmse.items()}
        for level, per_target in self.coverage.items():
            out.update({f"coverage_{level}_{t}": v for t, v in per_target.items()})
        return out


@dataclass
class TestForecast:
    """Point forecasts, calibrated upper bounds and truth for every test window."""

    prediction: np.ndarray
    uppers: dict[float, np.ndarray]
    truth: np.ndarray
    seconds: float


def forecast_test(bundle: ModelBundle, data: ProcessedDataset) -> TestForecast:
    """Forecast every test window exactly as the server would (same predict, same bounds)."""
    ends = data.ends("test")
    started = time.perf_counter()
    prediction = bundle.forecaster.predict(data.times, data.values, ends)
    uppers = {q: bundle.upper(prediction, q, data.values, ends) for q in bundle.calibration.levels}
    return TestForecast(prediction, uppers, data.truth(ends), time.perf_counter() - started)


def score(bundle: ModelBundle, data: ProcessedDataset) -> Evaluation:
    return score_forecast(bundle.family, forecast_test(bundle, data))


def score_forecast(family: str, forecast: TestForecast) -> Evaluation:
    """Protocol-A metrics at step 1, plus the headline NRMSE per horizon step."""
    prediction, truth = forecast.prediction, forecast.truth
    p1, y1 = prediction[:, 0], truth[:, 0]
    per_target = metrics.nrmse(y1, p1)
    nrmse_map = {t: float(v) for t, v in zip(TARGET_COLUMNS, per_target, strict=True)}
    headline_idx = [TARGET_COLUMNS.index(c) for c in HEADLINE_COLUMNS]
    coverage, width = {}, {}
    for level, upper in sorted(forecast.uppers.items()):
        coverage[_level(level)] = _by_target(metrics.coverage(y1, upper[:, 0]))
        width[_level(level)] = _by_target(metrics.mean_width(p1, upper[:, 0]))
    by_step = [
        float(np.mean(metrics.nrmse(truth[:, h], prediction[:, h])[headline_idx]))
        for h in range(prediction.shape[1])
    ]
    return Evaluation(
        family=family,
        nrmse={
            **{c: nrmse_map[c] for c in HEADLINE_COLUMNS},
            "avg": float(np.mean([nrmse_map[c] for c in HEADLINE_COLUMNS])),
            **{c: nrmse_map[c] for c in TARGET_COLUMNS if c not in HEADLINE_COLUMNS},
        },
        mae=_by_target(metrics.mae(y1, p1)),
        rmse=_by_target(metrics.rmse(y1, p1)),
        coverage=coverage,
        width=width,
        nrmse_by_step=by_step,
        predict_seconds=forecast.seconds,
    )


def _by_target(values: np.ndarray) -> dict[str, float]:
    return {t: float(v) for t, v in zip(TARGET_COLUMNS, values, strict=True)}


def _level(q: float) -> str:
    return f"{q:g}"
