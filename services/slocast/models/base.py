"""The contract every model family implements.

A forecaster maps a filled series (``times``, ``values``; see
:mod:`slocast.core.features`) and window ends to point forecasts of shape
``(N, horizon, K)`` in original units. The same :meth:`Forecaster.predict` runs
in the evaluator and in the HTTP server, so offline metrics describe exactly
what is served.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from slocast.core.features import FeatureSpec
from slocast.preprocess.dataset import ProcessedDataset

# Called with (completed, total, message) by trainers that report progress.
Progress = Callable[[int, int, str], None]


@dataclass
class FitReport:
    """What a fit did: parameters for tracking, and per-step validation curves."""

    params: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)


class Forecaster(ABC):
    family: ClassVar[str]

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    @property
    def history_rows(self) -> int:
        """Rows of history one forecast needs (older rows are ignored)."""
        return self.spec.window

    @abstractmethod
    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        """Train on the train split; use the val split only for early stopping/selection."""

    @abstractmethod
    def refit(self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int) -> Forecaster:
        """A new model with this one's settings fitted on the windows ``train_ends`` only.

        Cross-conformal calibration uses it to get residuals on rows this family
        never trained on. No early stopping happens: the training budget (trees,
        epochs) is the one this model's :meth:`fit` chose on validation, so the
        held-out rows cannot steer the refit. Call it on a fitted model.
        """

    @abstractmethod
    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Point forecasts, shape ``(len(ends), horizon, K)``, original units."""

    @abstractmethod
    def save(self, directory: Path) -> list[str]:
        """Write the fitted state in safe formats (no pickle); return the file names."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> Forecaster:
        """Rebuild a fitted forecaster from :meth:`save` output."""
