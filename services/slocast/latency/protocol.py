"""Protocol B (llm-d benchmark standard) for slocast and the upstream reference.

For each target, rows where that target is observed (> 0); for each seed a random
90/10 train/test split. slocast fits its trees on the 90% and its conformal offsets
on out-of-fold residuals within the 90% (cross-conformal; never on the test rows,
see :func:`slocast.latency.model.fit_cross_conformal`); the reference is XGBoost
``reg:quantileerror`` configured like the upstream production predictor on the
whole 90% with the same features. Both predict the P90 of the same 10%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from slocast.core.metrics import coverage, pinball_loss
from slocast.latency.features import build_features, regimes
from slocast.latency.model import (
    TARGET_COLUMNS,
    TARGET_PARAMS,
    TARGETS,
    TreeParams,
    fit_cross_conformal,
)
from slocast.latency.schema import Columns

QUANTILE = 0.9
TEST_FRACTION = 0.1
REFERENCE_PARAMS = {
    "objective": "reg:quantileerror",
    "quantile_alpha": QUANTILE,
    "max_depth": 6,
    "eta": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "tree_method": "hist",
    "nthread": 1,
}
REFERENCE_TREES = 200


@dataclass(frozen=True)
class SeedResult:
    pinball: float
    coverage: float


def _fit_reference(x: np.ndarray, y: np.ndarray, seed: int) -> xgb.Booster:
    return xgb.train({**REFERENCE_PARAMS, "seed": seed}, xgb.DMatrix(x, label=y), REFERENCE_TREES)


def _score(y: np.ndarray, upper: np.ndarray) -> SeedResult:
    return SeedResult(
        pinball=float(pinball_loss(y, upper, QUANTILE)), coverage=float(coverage(y, upper))
    )


def run_seed(
    x: np.ndarray, y: np.ndarray, regime_ids: np.ndarray, seed: int, params: TreeParams
) -> tuple[SeedResult, SeedResult]:
    """(slocast, reference) scores for one random 90/10 split."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(y.shape[0])
    n_test = int(round(TEST_FRACTION * y.shape[0]))
    test, train = order[:n_test], order[n_test:]
    model = fit_cross_conformal(
        "target", x[train], y[train], regime_ids[train], QUANTILE, params, seed
    )
    ours = _score(y[test], model.predict(x[test], regime_ids[test]))
    reference = _fit_reference(x[train], y[train], seed)
    ref_pred = np.asarray(reference.inplace_predict(x[test]), np.float64)
    return ours, _score(y[test], ref_pred)


def _summary(results: list[SeedResult]) -> dict[str, dict[str, float]]:
    pin = np.array([r.pinball for r in results])
    cov = np.array([r.coverage for r in results])
    return {
        "pinball": {"mean": float(pin.mean()), "std": float(pin.std())},
        "coverage": {"mean": float(cov.mean()), "std": float(cov.std())},
    }


def run_protocol_b(cols: Columns, seeds: int, params: dict[str, TreeParams] | None = None) -> dict:
    """``{target: {"slocast": summary, "reference": summary}}`` over ``seeds`` splits."""
    params = params or TARGET_PARAMS
    features = build_features(cols)
    regime_ids = regimes(cols)
    report = {}
    for target in TARGETS:
        y = cols[TARGET_COLUMNS[target]]
        observed = y > 0
        if observed.sum() < 50:
            raise ValueError(f"only {int(observed.sum())} rows observe {target}; need 50")
        pairs = [
            run_seed(features[observed], y[observed], regime_ids[observed], seed, params[target])
            for seed in range(seeds)
        ]
        report[target] = {
            "slocast": _summary([p[0] for p in pairs]),
            "reference": _summary([p[1] for p in pairs]),
        }
    return report
