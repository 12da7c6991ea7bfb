"""What computes point forecasts for a loaded bundle, and under which engine name.

Every predictor takes the arguments of :meth:`Forecaster.predict` (a filled series
and window ends) and returns ``(N, horizon, K)`` in original units, so the server
computes exactly what the evaluator scored. Families other than XGBoost are served
by their forecaster itself (baselines in numpy, GRU/LSTM through ONNX Runtime,
Prophet through its own predict). XGBoost gets native features and compiled trees
or XGBoost, by configuration: see :mod:`slocast.serve.tree_engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from slocast.models.bundle import ModelBundle

# Engine names reported in /v1/model and the predictions metric.
FAMILY_ENGINES: dict[str, str] = {
    "persistence": "numpy",
    "seasonal_naive": "numpy",
    "gru": "onnxruntime",
    "lstm": "onnxruntime",
    "prophet": "prophet",
    "xgboost": "xgboost",
    # Weighted averages: each member runs on its own family's engine, in-process.
    "ensemble": "members",
    "blend": "members",
}


class Predictor(Protocol):
    engine: str

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Point forecasts ``(len(ends), horizon, K)`` in original units."""
        ...

    def describe(self) -> dict:
        """Engine details for ``GET /v1/model``."""
        ...


class ForecasterPredictor:
    """The bundle's forecaster, called as the evaluator calls it."""

    def __init__(self, bundle: ModelBundle) -> None:
        self._predict = bundle.forecaster.predict
        self.engine = FAMILY_ENGINES.get(bundle.family, bundle.family)

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return self._predict(times, values, ends)

    def describe(self) -> dict:
        return {"engine": self.engine}


def make_predictor(
    bundle: ModelBundle,
    bundle_dir: Path,
    compiled_dir: Path,
    *,
    tree_engine: str,
    compiled_index_sha256: str | None = None,
) -> Predictor:
    """The predictor for ``bundle``; ``tree_engine`` (``SLOCAST_TREE_ENGINE``) picks
    what evaluates an XGBoost champion's trees.

    ``compiled_index_sha256`` is the registry's record of the libraries built at
    promotion (see :mod:`slocast.models.compiled_bundle`).
    """
    if bundle.family == "xgboost":
        # Imported here: XGBoost and the native kernels only for XGBoost champions.
        from slocast.serve.tree_engine import load_tree_predictor

        return load_tree_predictor(
            bundle,
            bundle_dir,
            compiled_dir,
            engine=tree_engine,
            compiled_index_sha256=compiled_index_sha256,
        )
    return ForecasterPredictor(bundle)
