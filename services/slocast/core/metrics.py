"""Forecast metrics, all on the original (inverse-transformed) scale.

NaN truth values (missing observations) are excluded per column, never imputed.
"""

from __future__ import annotations

import numpy as np


def _masked(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, np.float64)
    p = np.asarray(y_pred, np.float64)
    if y.shape != p.shape:
        raise ValueError(f"shape mismatch: truth {y.shape} vs prediction {p.shape}")
    return y, p


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean absolute error per column (axis 0 is rows)."""
    y, p = _masked(y_true, y_pred)
    return np.nanmean(np.abs(y - p), axis=0)


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    y, p = _masked(y_true, y_pred)
    return np.sqrt(np.nanmean((y - p) ** 2, axis=0))


def nrmse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """RMSE divided by the mean of the truth, per column (protocol A); NaN where
    the truth averages 0 (a column that is always 0 has no NRMSE)."""
    y, p = _masked(y_true, y_pred)
    error, mean = rmse(y, p), np.nanmean(y, axis=0)
    return np.divide(error, mean, out=np.full_like(error, np.nan), where=mean != 0)[()]


def coverage(y_true: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Share of rows with truth at or below the upper bound, per column."""
    y, u = _masked(y_true, upper)
    hit = np.where(np.isnan(y), np.nan, (y <= u).astype(np.float64))
    return np.nanmean(hit, axis=0)


def mean_width(point: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Mean distance of the upper bound above the point forecast, per column."""
    p, u = _masked(point, upper)
    return np.mean(u - p, axis=0)


def pinball_loss(y_true: np.ndarray, y_pred: np.ndarray, q: float) -> np.ndarray:
    """Mean quantile (pinball) loss at level ``q``, per column."""
    y, p = _masked(y_true, y_pred)
    diff = y - p
    return np.nanmean(np.maximum(q * diff, (q - 1.0) * diff), axis=0)
