"""Protocol B (llm-d benchmark standard) for slocast and the upstream reference.

For each target, rows where that target is observed (> 0); for each seed a random
90/10 train/test split. slocast picks one of its candidate configurations (the
upstream one included) by cross-validated pinball loss inside the 90%, fits its
trees on the 90% and its conformal offsets on out-of-fold residuals within the 90%
(cross-conformal; never on the test rows, see
:func:`slocast.latency.model.fit_selected`), its points clipped at a low
quantile of the 90%'s target (:func:`slocast.latency.model.point_floor`); the reference is XGBoost
``reg:quantileerror`` configured like the upstream production predictor on the
whole 90% with the same features. Both predict the P90 of the same 10%.

Model selection never reads the 10%: :func:`run_seed_inner_cv` scores a
configuration by cross-validation inside each seed's 90% (``slocast bench latency
--inner-cv``, and ``benchmarks/latency_select.py`` for the candidates compared in
docs/latency.md).

Where the law of a trace is known (the synthetic workloads), the exact conditional
P90 is scored on the same rows as an "oracle": the lowest pinball any model could
reach in expectation, so a ratio to the reference can be read against the best one
possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from slocast.core.errors import DatasetError
from slocast.core.metrics import coverage, pinball_loss
from slocast.latency.features import build_features, regimes
from slocast.latency.model import (
    CANDIDATES,
    TARGET_COLUMNS,
    TARGETS,
    TreeParams,
    fit_selected,
)
from slocast.latency.schema import Columns

QUANTILE = 0.9
TEST_FRACTION = 0.1
# Below this many observed rows a 10% test split holds under five rows per seed.
MIN_OBSERVED_ROWS = 50
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
    chosen: int = -1  # index of the candidate slocast selected (-1: reference)


def fit_reference(x: np.ndarray, y: np.ndarray, seed: int) -> xgb.Booster:
    return xgb.train({**REFERENCE_PARAMS, "seed": seed}, xgb.DMatrix(x, label=y), REFERENCE_TREES)


def _score(y: np.ndarray, upper: np.ndarray, chosen: int = -1) -> SeedResult:
    return SeedResult(
        pinball=float(pinball_loss(y, upper, QUANTILE)),
        coverage=float(coverage(y, upper)),
        chosen=chosen,
    )


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of protocol B's random 90/10 split for ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    return order[n_test:], order[:n_test]


def _fit_and_score(
    x: np.ndarray,
    y: np.ndarray,
    regime_ids: np.ndarray,
    fit: np.ndarray,
    score: np.ndarray,
    seed: int,
    candidates: tuple[TreeParams, ...],
) -> tuple[np.ndarray, np.ndarray, int]:
    """slocast's and the reference's P90 for the ``score`` rows, fitted on ``fit`` only,
    and the index of the candidate slocast chose (by validation inside ``fit``)."""
    model, selection = fit_selected(
        "target", x[fit], y[fit], regime_ids[fit], QUANTILE, candidates, seed
    )
    ours = model.predict(x[score], regime_ids[score])
    reference = fit_reference(x[fit], y[fit], seed)
    return ours, np.asarray(reference.inplace_predict(x[score]), np.float64), selection.chosen


def _candidates(params: TreeParams | tuple[TreeParams, ...]) -> tuple[TreeParams, ...]:
    return (params,) if isinstance(params, TreeParams) else tuple(params)


def run_seed(
    x: np.ndarray,
    y: np.ndarray,
    regime_ids: np.ndarray,
    seed: int,
    params: TreeParams | tuple[TreeParams, ...],
) -> tuple[SeedResult, SeedResult]:
    """(slocast, reference) scores for one random 90/10 split; ``params``: one
    configuration or the candidates to select from inside the 90%."""
    train, test = split(y.shape[0], seed)
    ours, ref, chosen = _fit_and_score(x, y, regime_ids, train, test, seed, _candidates(params))
    return _score(y[test], ours, chosen), _score(y[test], ref)


def run_seed_inner_cv(
    x: np.ndarray,
    y: np.ndarray,
    regime_ids: np.ndarray,
    seed: int,
    params: TreeParams | tuple[TreeParams, ...],
    folds: int = 5,
) -> tuple[SeedResult, SeedResult]:
    """(slocast, reference) scores by ``folds``-fold CV inside the seed's 90% split.

    For choosing objectives and hyper-parameters without looking at the test 10%:
    every training row is predicted by the whole procedure (cross-conformal included)
    fitted on the other folds; the test rows are never read.
    """
    train, _ = split(y.shape[0], seed)
    fold = np.random.default_rng(1000 + seed).permutation(train.shape[0]) % folds
    ours, ref = np.empty(train.shape[0]), np.empty(train.shape[0])
    for k in range(folds):
        held = fold == k
        ours[held], ref[held], _ = _fit_and_score(
            x, y, regime_ids, train[~held], train[held], seed * folds + k, _candidates(params)
        )
    return _score(y[train], ours), _score(y[train], ref)


def _summary(results: list[SeedResult]) -> dict:
    pin = np.array([r.pinball for r in results])
    cov = np.array([r.coverage for r in results])
    out = {
        "pinball": {"mean": float(pin.mean()), "std": float(pin.std())},
        "coverage": {"mean": float(cov.mean()), "std": float(cov.std())},
    }
    if any(r.chosen >= 0 for r in results):
        out["chosen"] = [r.chosen for r in results]
    return out


def run_protocol_b(
    cols: Columns,
    seeds: int,
    params: dict[str, TreeParams | tuple[TreeParams, ...]] | None = None,
    inner_cv: bool = False,
    targets: tuple[str, ...] = TARGETS,
    oracle: dict[str, np.ndarray] | None = None,
) -> dict:
    """``{target: {"slocast": summary, "reference": summary}}`` over ``seeds`` splits.

    A target observed (> 0) on fewer than :data:`MIN_OBSERVED_ROWS` rows is not
    scored: ``{target: {"skipped": reason}}`` (a trace of prefill pods observes
    TTFT only). :class:`DatasetError` when no target can be scored.

    ``params`` per target: one configuration or candidates; by default
    :data:`slocast.latency.model.CANDIDATES` (the served configuration, the upstream
    one, ...), selected per seed by validation inside the 90%. With ``inner_cv`` the
    scores come from cross-validation inside each training split
    (:func:`run_seed_inner_cv`), the test rows unused: the numbers to select on.
    ``oracle`` per target: the true conditional P90 of every row of ``cols``
    (:func:`slocast.latency.synthetic.conditional_quantile_ms`), scored on the rows
    slocast and the reference are scored on, as ``report[target]["oracle"]``.
    """
    params = params or CANDIDATES
    run = run_seed_inner_cv if inner_cv else run_seed
    features = build_features(cols)
    regime_ids = regimes(cols)
    report = {}
    for target in targets:
        y = cols[TARGET_COLUMNS[target]]
        observed = y > 0
        if observed.sum() < MIN_OBSERVED_ROWS:
            report[target] = {
                "skipped": f"only {int(observed.sum())} rows observe {target} "
                f"({TARGET_COLUMNS[target]} > 0); protocol B needs {MIN_OBSERVED_ROWS}"
            }
            continue
        pairs = [
            run(features[observed], y[observed], regime_ids[observed], seed, params[target])
            for seed in range(seeds)
        ]
        report[target] = {
            "slocast": _summary([p[0] for p in pairs]),
            "reference": _summary([p[1] for p in pairs]),
        }
        if oracle is not None:
            y_seen, bound = y[observed], np.asarray(oracle[target], np.float64)[observed]
            # The rows each run scores: the test 10%, or with inner CV every training row.
            scored = [split(y_seen.shape[0], seed)[0 if inner_cv else 1] for seed in range(seeds)]
            report[target]["oracle"] = _summary([_score(y_seen[r], bound[r]) for r in scored])
    if all("skipped" in scores for scores in report.values()):
        raise DatasetError("; ".join(scores["skipped"] for scores in report.values()))
    return report
