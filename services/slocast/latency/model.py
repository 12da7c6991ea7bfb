"""Fit and apply one calibrated latency model per target (TTFT or TPOT).

A model is an XGBoost quantile regressor (``reg:quantileerror`` at the served level,
monotone in the load features) plus a conformal correction that makes its bound a
real P90 on fresh data:

    upper = point + scale * offset[regime],   scale = max(point, SCALE_FLOOR_MS)

Residuals are normalised by the predicted level because latency noise grows with
latency (a 5 s TTFT under contention is not off by the same milliseconds as a 50 ms
one); offsets are fitted per load regime (Mondrian) so coverage holds in each
regime, with the pooled offset for regimes too rare to calibrate alone. Offsets
come from rows the trees never saw (see :mod:`slocast.latency.window` and
:mod:`slocast.latency.protocol`).

One booster per target and quantile: a multi-quantile booster compiles wrongly with
Treelite (it applies the first target's base score to all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from slocast.core.conformal import MondrianCalibration
from slocast.latency.features import FEATURE_NAMES, monotone_constraints

TARGETS = ("ttft", "tpot")
TARGET_COLUMNS = {"ttft": "actual_ttft_ms", "tpot": "actual_tpot_ms"}
SCALE_FLOOR_MS = 1e-3
# A regime needs this many calibration residuals for its own offset.
MIN_REGIME_CALIBRATION = 50


@dataclass(frozen=True)
class TreeParams:
    """Booster hyper-parameters (chosen on protocol B, see docs/latency.md)."""

    n_estimators: int = 200
    max_depth: int = 6
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0

    def xgb_params(self, quantile: float, seed: int, monotone: bool) -> dict:
        params = {
            "objective": "reg:quantileerror",
            "quantile_alpha": quantile,
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "tree_method": "hist",
            "seed": seed,
            "nthread": 1,
        }
        if monotone:
            params["monotone_constraints"] = "(" + ",".join(map(str, monotone_constraints())) + ")"
        return params


def fit_booster(
    x: np.ndarray,
    y: np.ndarray,
    quantile: float,
    params: TreeParams,
    seed: int,
    monotone: bool = True,
) -> xgb.Booster:
    dtrain = xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES))
    return xgb.train(
        params.xgb_params(quantile, seed, monotone), dtrain, num_boost_round=params.n_estimators
    )


def predict_booster(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    return np.asarray(booster.inplace_predict(x), dtype=np.float64).reshape(-1)


def scale_of(point: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(point, np.float64), SCALE_FLOOR_MS)


def calibrate(
    point: np.ndarray, y: np.ndarray, regime_ids: np.ndarray, quantile: float
) -> MondrianCalibration:
    """Per-regime offsets on normalised signed residuals ``(y - point) / scale``."""
    return MondrianCalibration.fit(
        np.asarray(y, np.float64) - point,
        regime_ids,
        quantile,
        scale=scale_of(point),
        min_group_size=MIN_REGIME_CALIBRATION,
    )


def upper_bound(
    point: np.ndarray, calibration: MondrianCalibration, regime_ids: np.ndarray
) -> np.ndarray:
    """Calibrated upper bound, clipped at 0 (latencies are never negative)."""
    upper = calibration.upper(point, regime_ids, scale=scale_of(point))
    return np.maximum(upper, 0.0)


@dataclass
class TargetModel:
    """Trees + calibration of one target: what a bundle stores per target."""

    target: str
    quantile: float
    booster: xgb.Booster
    calibration: MondrianCalibration

    def predict(self, x: np.ndarray, regime_ids: np.ndarray) -> np.ndarray:
        return upper_bound(predict_booster(self.booster, x), self.calibration, regime_ids)

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``<target>.ubj`` and ``<target>.calibration.json``; returns file names."""
        trees = f"{self.target}.ubj"
        calib = f"{self.target}.calibration.json"
        self.booster.save_model(directory / trees)
        (directory / calib).write_text(
            json.dumps({"quantile": self.quantile, "mondrian": self.calibration.to_dict()})
        )
        return {"trees": trees, "calibration": calib}


def fit_target_model(
    target: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    calib_x: np.ndarray,
    calib_y: np.ndarray,
    calib_regimes: np.ndarray,
    quantile: float,
    params: TreeParams,
    seed: int,
) -> TargetModel:
    booster = fit_booster(train_x, train_y, quantile, params, seed)
    point = predict_booster(booster, calib_x)
    return TargetModel(
        target, quantile, booster, calibrate(point, calib_y, calib_regimes, quantile)
    )
