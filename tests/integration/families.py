"""A fast, real candidate family for the service tests: least-squares autoregression.

It learns (it beats persistence on the synthetic series) in milliseconds, so the
integration suite exercises promotion without waiting for XGBoost or a GRU. The
services only see it through the family registry, exactly like a production family.
``SLOCAST_TEST_FIT_SECONDS`` stretches the fit so a test can kill a trainer mid-way.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from slocast.core.features import FeatureSpec, gather_windows
from slocast.core.schema import TARGET_INDEX
from slocast.models import FAMILIES
from slocast.models.base import FitReport, Forecaster, Progress
from slocast.preprocess.dataset import ProcessedDataset

FAMILY = "ridge_ar"


class RidgeAR(Forecaster):
    family = FAMILY

    def __init__(self, spec: FeatureSpec, coef: np.ndarray | None = None) -> None:
        super().__init__(spec)
        self.coef = coef

    def _design(self, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        windows = gather_windows(values, np.asarray(ends, np.int64), self.spec.window)
        x = np.log1p(np.clip(windows[..., list(TARGET_INDEX)], 0, None)).reshape(len(ends), -1)
        return np.hstack([x, np.ones((len(ends), 1))])

    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        time.sleep(float(os.environ.get("SLOCAST_TEST_FIT_SECONDS", "0")))
        self._solve(data, data.ends("train"))
        return FitReport(params={"ridge": 1e-3})

    def refit(self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int) -> RidgeAR:
        clone = RidgeAR(self.spec)
        clone._solve(data, train_ends)
        return clone

    def _solve(self, data: ProcessedDataset, ends: np.ndarray) -> None:
        x = self._design(data.values, ends)
        y = np.log1p(np.clip(np.nan_to_num(data.truth(ends)[:, 0]), 0, None))
        ridge = 1e-3 * np.eye(x.shape[1])
        self.coef = np.linalg.solve(x.T @ x + ridge, x.T @ y)

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        step = np.expm1(self._design(values, ends) @ self.coef)
        return np.repeat(step[:, None, :], self.spec.horizon, axis=1)

    def save(self, directory: Path) -> list[str]:
        (directory / "ridge_ar.json").write_text(json.dumps({"coef": self.coef.tolist()}))
        return ["ridge_ar.json"]

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> RidgeAR:
        coef = np.asarray(json.loads((directory / "ridge_ar.json").read_text())["coef"])
        return cls(spec, coef)


def register() -> None:
    FAMILIES.setdefault(FAMILY, f"{__name__}:RidgeAR")
