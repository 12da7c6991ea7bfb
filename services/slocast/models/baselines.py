"""Baselines every candidate must beat: persistence and seasonal naive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slocast.core.features import FeatureSpec
from slocast.core.schema import TARGET_INDEX
from slocast.models.base import FitReport, Forecaster, Progress
from slocast.preprocess.dataset import ProcessedDataset


class Persistence(Forecaster):
    """Every future step repeats the last observed row."""

    family = "persistence"

    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        return FitReport()

    def refit(self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int) -> Persistence:
        return self  # nothing is learned from data

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        last = values[np.asarray(ends, np.int64) - 1][:, list(TARGET_INDEX)]
        return np.repeat(last[:, None, :], self.spec.horizon, axis=1)

    def save(self, directory: Path) -> list[str]:
        return []

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> Persistence:
        return cls(spec)


def rows_per_day(step_seconds: float) -> int:
    """Rows in one day at ``step_seconds`` (nearest whole row, at least one)."""
    return max(1, round(86_400 / step_seconds))


class SeasonalNaive(Forecaster):
    """The value one season (a day) before the forecast time.

    Looks back ``season_steps`` rows; where that row is not in the history, or the
    series has a gap so the row is not exactly one season earlier, it falls back
    to persistence for that window.
    """

    family = "seasonal_naive"

    def __init__(self, spec: FeatureSpec, season_steps: int = 0) -> None:
        super().__init__(spec)
        self.season_steps = season_steps or rows_per_day(spec.step_seconds)

    @property
    def history_rows(self) -> int:
        return max(self.spec.window, self.season_steps)

    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        self.season_steps = data.config.season_steps or rows_per_day(self.spec.step_seconds)
        return FitReport(params={"season_steps": self.season_steps})

    def refit(self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int) -> SeasonalNaive:
        return self  # nothing is learned from data

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        ends = np.asarray(ends, np.int64)
        horizon = self.spec.horizon
        targets = ends[:, None] + np.arange(horizon)[None, :]
        source = targets - self.season_steps
        last = ends - 1
        ns = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
        step_ns = int(round(self.spec.step_seconds * 1e9))
        season_ns = self.season_steps * step_ns
        # The time of a target row: from the grid, since it may lie beyond the series.
        target_ns = ns[last][:, None] + step_ns * (np.arange(horizon)[None, :] + 1)
        usable = (source >= 0) & (source <= last[:, None])
        safe = np.where(usable, source, 0)
        usable &= ns[safe] == target_ns - season_ns
        picked = np.where(
            usable[..., None],
            values[safe][..., list(TARGET_INDEX)],
            values[last][:, None, list(TARGET_INDEX)],
        )
        return picked

    def save(self, directory: Path) -> list[str]:
        (directory / "seasonal_naive.json").write_text(
            json.dumps({"season_steps": self.season_steps})
        )
        return ["seasonal_naive.json"]

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> SeasonalNaive:
        params = json.loads((directory / "seasonal_naive.json").read_text())
        return cls(spec, season_steps=int(params["season_steps"]))
