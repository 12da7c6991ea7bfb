"""Prophet: one model per target, forecasting the change from the last observed value.

A plain Prophet only sees the calendar, so it cannot know that the cell is busy
right now; at a 2-minute horizon that loses badly to persistence. Each model
therefore forecasts the change ``y - last`` from the target's last observed value,
with the gap between the window mean and that value as a regressor (both in the
target's units, so the fit's squared error is the forecast's), and the forecast is
``last + change``. The level passes through ``last`` with weight 1: a site whose
traffic level moves (x0.1, x10) keeps forecasting from its new level, where a
model of absolute values keeps its intercept, the old level (README, "LTE sites":
1.13x persistence instead of 0.92x). Scaling the change by the window's level
(as XGBoost does) was worse here: Prophet has no sample weights, so the quiet
windows, where relative changes are largest, dominated the fit (1.13x on PobleSec
itself). Models saved before (state without ``"target"``: absolute values, the
last value and the window mean as regressors) load and forecast as they were fitted.

For every horizon step the same window-end values are used, so a forecast never
reads a row after ``end - 1``; the coefficients are learned for step 1, which
makes later steps lean towards persistence (honest, if not optimal, for
``horizon > 1``). Saved with ``prophet.serialize.model_to_json`` (no pickle).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from slocast.core.features import FeatureSpec, gather_windows, target_times
from slocast.core.schema import TARGET_INDEX
from slocast.models.base import FitReport, Forecaster, Progress
from slocast.preprocess.dataset import ProcessedDataset

STATE_FILE = "prophet.json"
CHANGE, ABSOLUTE = "change", "absolute"  # what the models fit (ABSOLUTE: saved before)
REGRESSORS: dict[str, tuple[str, ...]] = {CHANGE: ("gap",), ABSOLUTE: ("last", "window_mean")}

# Prophet's defaults apart from the seasonalities; not tuned (no search was run).
DEFAULT_PARAMS: dict = {
    "growth": "linear",
    # "auto": a season is fitted only once the training rows span two of them, so a
    # few days of data do not extrapolate a made-up weekly shape.
    "daily_seasonality": "auto",
    "weekly_seasonality": "auto",
    "yearly_seasonality": False,
    "changepoint_prior_scale": 0.05,
    "seasonality_prior_scale": 10.0,
}

# cmdstanpy logs every optimiser start/stop at INFO; prophet logs a missing plotly.
_NOISY_LOGGERS = ("cmdstanpy", "prophet", "prophet.plot", "prophet.models")


@contextmanager
def _quiet_prophet() -> Iterator[None]:
    """Mute the noisy loggers for the duration, then restore them.

    ``disabled`` rather than a level: cmdstanpy resets its logger's level to DEBUG
    the first time it logs.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    states = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, state in zip(loggers, states, strict=True):
            logger.disabled = state


def _prophet_api() -> tuple:
    """Import Prophet lazily (serving tree models must not import it), quietly."""
    with _quiet_prophet():
        from prophet import Prophet
        from prophet.serialize import model_from_json, model_to_json
    return Prophet, model_to_json, model_from_json


class ProphetForecaster(Forecaster):
    family = "prophet"

    def __init__(self, spec: FeatureSpec, params: dict | None = None, target: str = CHANGE) -> None:
        super().__init__(spec)
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.target = target
        self.models: list = []

    def _frame(
        self, times: np.ndarray, values: np.ndarray, ends: np.ndarray, k: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """One row per (end, step): the forecast time and the window-end regressors;
        and what the model's output adds to (per end: the last value, or 0)."""
        ends = np.asarray(ends, np.int64)
        horizon = self.spec.horizon
        column = gather_windows(values, ends, self.spec.window)[:, :, TARGET_INDEX[k]]
        last, mean = column[:, -1], column.mean(axis=1)
        frame = {"ds": target_times(times, ends, horizon, self.spec.step_seconds).reshape(-1)}
        if self.target == ABSOLUTE:
            frame |= {"last": np.repeat(last, horizon), "window_mean": np.repeat(mean, horizon)}
            return pd.DataFrame(frame), np.zeros_like(last)
        frame["gap"] = np.repeat(mean - last, horizon)
        return pd.DataFrame(frame), last

    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        # The MAP fit starts from Prophet's deterministic initial values, so it does
        # not depend on ``seed``; uncertainty sampling (random) is off: intervals
        # come from conformal calibration instead.
        started = time.perf_counter()
        self._fit(data, data.ends("train"), progress)
        val_ends = data.ends("val")
        truth = data.truth(val_ends)[:, 0, :]
        val_pred = self.predict(data.times, data.values, val_ends)[:, 0, :]
        metrics: dict[str, float] = {}
        for k, target in enumerate(self.spec.targets):
            y, p = truth[:, k], val_pred[:, k]
            ok = ~np.isnan(y)
            metrics[f"val_nrmse_{target}"] = float(
                np.sqrt(np.mean((y[ok] - p[ok]) ** 2)) / np.mean(y[ok])
            )
        metrics["fit_seconds"] = time.perf_counter() - started
        return FitReport(
            params={**self.params, "target": self.target, "regressors": list(self._regressors)},
            metrics=metrics,
        )

    @property
    def _regressors(self) -> tuple[str, ...]:
        return REGRESSORS[self.target]

    def refit(
        self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int
    ) -> ProphetForecaster:
        clone = ProphetForecaster(self.spec, self.params, self.target)
        clone._fit(data, train_ends, None)
        return clone

    def _fit(self, data: ProcessedDataset, ends: np.ndarray, progress: Progress | None) -> None:
        Prophet, _, _ = _prophet_api()
        truth = data.truth(ends)[:, 0, :]
        self.models = []
        n_targets = len(self.spec.targets)
        for k, target in enumerate(self.spec.targets):
            # Step-1 rows only: the regressors are then exactly one row old.
            frame, base = self._frame(data.times, data.values, ends, k)
            frame = frame.iloc[:: self.spec.horizon].assign(y=truth[:, k] - base)
            frame = frame.dropna(subset=["y"])
            model = Prophet(**self.params, uncertainty_samples=0)
            for name in self._regressors:
                model.add_regressor(name)
            with _quiet_prophet():
                model.fit(frame)
            self.models.append(model)
            if progress:
                progress(k + 1, n_targets, f"prophet {target}")

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if not self.models:
            raise RuntimeError("ProphetForecaster is not fitted")
        ends = np.asarray(ends, np.int64)
        out = np.empty((ends.size, self.spec.horizon, len(self.models)), np.float64)
        if ends.size == 0:
            return out
        for k, model in enumerate(self.models):
            frame, base = self._frame(times, values, ends, k)
            yhat = model.predict(frame)["yhat"].to_numpy().reshape(ends.size, self.spec.horizon)
            out[:, :, k] = base[:, None] + yhat
        return self.spec.floor_forecast(out)

    def save(self, directory: Path) -> list[str]:
        _, model_to_json, _ = _prophet_api()
        directory = Path(directory)
        files = []
        for target, model in zip(self.spec.targets, self.models, strict=True):
            name = f"prophet_{target}.json"
            (directory / name).write_text(model_to_json(model))
            files.append(name)
        state = {
            "params": self.params,
            "target": self.target,
            "regressors": list(self._regressors),
            "files": files,
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))
        return [*files, STATE_FILE]

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> ProphetForecaster:
        _, _, model_from_json = _prophet_api()
        directory = Path(directory)
        state = json.loads((directory / STATE_FILE).read_text())
        # States without "target" were saved before Prophet forecast changes: absolute values.
        forecaster = cls(spec, params=state["params"], target=state.get("target", ABSOLUTE))
        # Prophet's reader passes a pandas keyword that pandas 3 deprecates: not ours to fix.
        with _quiet_prophet(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*convert_dates.*")
            forecaster.models = [
                model_from_json((directory / name).read_text()) for name in state["files"]
            ]
        return forecaster
