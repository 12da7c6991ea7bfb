"""Fit and apply one calibrated latency model per target (TTFT or TPOT).

A model is an XGBoost booster monotone in the load features (per target: a mean
model, or a pinball-loss model on log latency, see :data:`TARGET_PARAMS`) plus a
conformal correction that makes its bound a real P90 on fresh data:

    point = max(trees' point, floor)
    upper = point + scale * offset[regime],   scale = max(point, SCALE_FLOOR_MS)
                                              (or one constant: additive offsets)

``floor`` is a low quantile of the training targets (:func:`point_floor`): a mean model's
leaves can push a light row's point below zero (on ShareGPT the TTFT default
predicted down to -154 ms, a bound of 0 ms), and no point below anything ever
observed is a plausible latency. The offsets are calibrated on the clipped points,
so the bound of a clipped row is its floor plus its offset, as served.

Residuals are normalised by the predicted level because latency noise grows with
latency (a 5 s TTFT under contention is not off by the same milliseconds as a 50 ms
one); where it does not (jitter of a fixed size), a candidate normalises them by one
constant instead, so its offsets are the same milliseconds for every row; offsets are fitted per load regime (Mondrian) so coverage holds in each
regime, with one shared offset for the regimes too rare to calibrate alone. Offsets
come from rows the trees never saw (see :mod:`slocast.latency.window` and
:mod:`slocast.latency.protocol`).

One booster per target and quantile: a multi-quantile booster compiles wrongly with
Treelite (it applies the first target's base score to all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xgboost as xgb

from slocast.core.conformal import MondrianCalibration, conformal_offset
from slocast.latency.features import (
    FEATURE_NAMES,
    NUM_REGIMES,
    WAITING_EDGES,
    monotone_constraints,
)

TARGETS = ("ttft", "tpot")
TARGET_COLUMNS = {"ttft": "actual_ttft_ms", "tpot": "actual_tpot_ms"}
SCALE_FLOOR_MS = 1e-3
# A regime needs this many calibration residuals for its own offset.
MIN_REGIME_CALIBRATION = 50


# XGBoost's quantile objective re-fits leaf values after each split (adaptive
# leaves), which does not respect monotone constraints; squared error does, and so
# does "log_quantile": the pinball gradient as a custom objective (leaves are plain
# gradient steps, no re-fit; see :func:`smoothed_pinball`). Its trees are stored as a
# squared-error model (identity output), so serving and compiling are unchanged.
OBJECTIVES = {
    "log_squared": lambda _q: {"objective": "reg:squarederror"},
    "log_quantile": lambda _q: {"objective": "reg:squarederror"},
    "squared": lambda _q: {"objective": "reg:squarederror"},
    "gamma": lambda _q: {"objective": "reg:gamma"},
    "quantile": lambda q: {"objective": "reg:quantileerror", "quantile_alpha": q},
    # The same on log latency: a quantile commutes with the log, so exp of the
    # log-P90 is the P90, and every tree's step is relative (the same for a 1 s and
    # a 100 s TTFT), where in ms 200 trees at 0.05 under-fit minute-long queues.
    "log_quantileerror": lambda q: {"objective": "reg:quantileerror", "quantile_alpha": q},
}
# Objectives whose trees predict log latency (served as exp(raw)).
LOG_OBJECTIVES = frozenset({"log_squared", "log_quantile", "log_quantileerror"})
LOG_FLOOR_MS = 1e-3
# "log_quantile": the pinball step is smoothed over this width of log latency (1 %),
# so rows right at the current prediction pull it by their probability of lying
# above instead of a jump between +q and q-1.
PINBALL_SMOOTHING = 0.01


def to_training_target(y: np.ndarray, objective: str) -> np.ndarray:
    return np.log(np.maximum(y, LOG_FLOOR_MS)) if objective in LOG_OBJECTIVES else y


def point_from_raw(raw: np.ndarray, objective: str) -> np.ndarray:
    """Raw tree output (what compiled libraries return) to a point latency in ms."""
    return np.exp(raw) if objective in LOG_OBJECTIVES else raw


def smoothed_pinball(quantile: float, width: float = PINBALL_SMOOTHING):
    """XGBoost custom objective: gradient boosting on the pinball loss at ``quantile``.

    Gradient ``P(y < pred) - quantile`` with the indicator smoothed by a logistic of
    ``width``; the hessian is constant 1, so every leaf moves the prediction by
    ``learning_rate x (share of its rows above - (1 - quantile))`` in log latency
    (a relative step, the same on a 20 ms and a 2 s workload). Unlike
    ``reg:quantileerror`` no leaf is re-fitted after the tree is built, so the
    monotone constraints hold.
    """

    def objective(pred: np.ndarray, dtrain: xgb.DMatrix) -> tuple[np.ndarray, np.ndarray]:
        residual = dtrain.get_label() - pred
        below = 0.5 * (1.0 + np.tanh(-0.5 * residual / width))  # logistic(-r / width)
        return below - quantile, np.ones_like(pred)

    return objective


@dataclass(frozen=True)
class TreeParams:
    """Booster hyper-parameters (chosen on protocol B, see docs/latency.md)."""

    # "squared": squared error (a mean model); "log_squared": squared error on log
    # latency (a geometric-mean model); "log_quantile": pinball loss at the served
    # level on log latency, monotone (smoothed_pinball); "quantile":
    # reg:quantileerror at the level (not monotone).
    objective: str = "squared"
    n_estimators: int = 200
    max_depth: int = 6
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    # Monotone constraints on the load features (off only for the upstream config).
    monotone: bool = True
    # Conformal correction (see :func:`calibrate`): "mondrian" (per load regime,
    # non-decreasing in queue depth), "two_sided" (one pooled offset that shrinks
    # the bound as readily as it widens it: for models that already estimate the
    # quantile) or "none" (the trees' output is the bound).
    calibration: str = "mondrian"
    # Residuals over the row's point ("relative") or over one constant, the median
    # calibration point ("additive": offsets of the same milliseconds for every row
    # of a regime, for noise that does not grow with the latency).
    normalise: str = "relative"

    @property
    def label(self) -> str:
        """Short description for /status: objective, trees, constraints, calibration."""
        shape = f"{self.n_estimators}x{self.max_depth}@{self.learning_rate:g}"
        additive = " additive" if self.normalise == "additive" else ""
        return (
            f"{self.objective} {shape} {'monotone' if self.monotone else 'free'} "
            f"{self.calibration}{additive}"
        )

    def trees(self) -> TreeParams:
        """The same trees without the calibration choice (fits can be shared)."""
        return replace(self, calibration="mondrian", normalise="relative")

    def xgb_params(self, quantile: float, seed: int, monotone: bool) -> dict:
        params = {
            **OBJECTIVES[self.objective](quantile),
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "tree_method": "hist",
            "seed": seed,
            "nthread": 1,
        }
        if monotone and self.monotone:
            params["monotone_constraints"] = "(" + ",".join(map(str, monotone_constraints())) + ")"
        return params


# Chosen per target (docs/latency.md): a mean model for TTFT, whose rare
# multi-second stalls a geometric mean ignores. For TPOT a quantile model on log
# latency (selected by cross-validation inside protocol B's training splits): its
# noise is multiplicative around a stable level with a heavy, uneven upper tail that
# a mean model is dragged by; 100 depth-3 trees keep its serving cost as before.
TARGET_PARAMS: dict[str, TreeParams] = {
    "ttft": TreeParams(objective="squared", max_depth=4),
    "tpot": TreeParams(
        objective="log_quantile",
        max_depth=3,
        n_estimators=100,
        learning_rate=0.02,
        subsample=0.5,
        min_child_weight=20.0,
    ),
}
# The upstream production configuration (llm-d latency predictor): XGBoost's
# quantile objective at the served level, 200 trees of depth 6, the same features.
# Always a candidate: a target never serves something that validated worse than it.
UPSTREAM_PARAMS = TreeParams(
    objective="quantile",
    n_estimators=200,
    max_depth=6,
    learning_rate=0.05,
    subsample=0.8,
    colsample_bytree=0.8,
    monotone=False,
    calibration="none",
)
# TPOT also tries the upstream trees with a lower learning rate (0.03: the same 200
# depth-6 trees, a smoother fit) and a two-sided offset; it is the one chosen on the
# saturated and overloaded simulated servers (docs/latency.md).
UPSTREAM_SLOW_TPOT = replace(UPSTREAM_PARAMS, learning_rate=0.03, calibration="two_sided")
# Both targets also try the upstream trees on log latency with a two-sided offset:
# on loaded servers, where latency spans seconds to minutes, a relative step per
# tree fits both ends (docs/latency.md).
LOG_UPSTREAM = replace(UPSTREAM_PARAMS, objective="log_quantileerror", calibration="two_sided")
# TTFT's default trees with additive offsets: queueing TTFT (and fixed-size jitter)
# spreads by seconds whatever the point, where relative offsets give the slow rows
# margins far wider than needed (docs/latency.md, "Additive offsets as a TTFT
# candidate"; in the streaming trainer since violators are pooled, not maxed).
ADDITIVE_TTFT = replace(TARGET_PARAMS["ttft"], normalise="additive")
# TTFT also tries TPOT's small monotone quantile model (100 depth-3 trees on log
# latency, two-sided offset): on a lightly loaded server TTFT's noise is
# multiplicative around a stable level, as TPOT's is (docs/latency.md).
# Candidates per target, chosen by validation pinball loss on rows the candidate
# was not fitted on (:func:`fit_selected`, and the trainer's promotion rule).
CANDIDATES: dict[str, tuple[TreeParams, ...]] = {
    "ttft": (
        TARGET_PARAMS["ttft"],
        UPSTREAM_PARAMS,
        replace(UPSTREAM_PARAMS, calibration="two_sided"),
        replace(TARGET_PARAMS["tpot"], calibration="two_sided"),
        LOG_UPSTREAM,
        ADDITIVE_TTFT,
    ),
    "tpot": (
        TARGET_PARAMS["tpot"],
        UPSTREAM_PARAMS,
        replace(UPSTREAM_PARAMS, calibration="two_sided"),
        UPSTREAM_SLOW_TPOT,
        LOG_UPSTREAM,
    ),
}


# Objectives whose trees keep monotone constraints (reg:quantileerror re-fits leaves).
MONOTONE_OBJECTIVES = frozenset(OBJECTIVES) - {"quantile", "log_quantileerror"}


def candidates(target: str, monotone: bool) -> tuple[TreeParams, ...]:
    """The configurations the streaming trainer chooses from for a target.

    ``monotone``: only configurations whose trees keep the monotone constraints, all
    constrained, so more load never lowers a bound whichever wins; the upstream
    configuration (``reg:quantileerror``) cannot keep them and is left out.
    """
    offered = CANDIDATES[target]
    if not monotone:
        return offered
    return tuple(replace(p, monotone=True) for p in offered if p.objective in MONOTONE_OBJECTIVES)


def fit_booster(
    x: np.ndarray,
    y: np.ndarray,
    quantile: float,
    params: TreeParams,
    seed: int,
    monotone: bool = True,
) -> xgb.Booster:
    target = to_training_target(y, params.objective)
    dtrain = xgb.DMatrix(x, label=target, feature_names=list(FEATURE_NAMES))
    xgb_params = params.xgb_params(quantile, seed, monotone)
    custom = None
    if params.objective == "log_quantile":
        # Start from the median and let the pinball gradient walk to the quantile.
        xgb_params["base_score"] = float(np.median(target))
        custom = smoothed_pinball(quantile)
    return xgb.train(xgb_params, dtrain, num_boost_round=params.n_estimators, obj=custom)


def predict_booster(booster: xgb.Booster, x: np.ndarray, objective: str) -> np.ndarray:
    raw = np.asarray(booster.inplace_predict(x), dtype=np.float64).reshape(-1)
    return point_from_raw(raw, objective)


# The floor's level among the training targets (docs/latency.md, "Point floor").
POINT_FLOOR_QUANTILE = 0.05


def point_floor(y: np.ndarray) -> float:
    """The floor of the points of a model fitted on targets ``y`` (training rows only).

    A low quantile rather than the minimum: the rows whose trees' point falls
    below the training targets are rows the trees got wrong (their leaves were
    pulled down by other rows), not the fastest ones, and their actual latency is
    typical; a floor at the minimum leaves their bound below most of them. Lifting
    a truly fast row's point to the floor costs little at an upper quantile (the
    pinball loss weighs a bound too high by 1 - q, one too low by q).
    """
    return float(np.quantile(y, POINT_FLOOR_QUANTILE))


# Calibration files written before the floor existed have no floor key: their
# models served unclipped points, which a floor of 0 reproduces up to a bound of
# offset x SCALE_FLOOR_MS instead of 0 for a negative point.
LEGACY_POINT_FLOOR_MS = 0.0


def stored_point_floor(calibration_file: dict) -> float:
    """The floor of a saved ``<target>.calibration.json`` (see :meth:`TargetModel.save`)."""
    return float(calibration_file.get("point_floor_ms", LEGACY_POINT_FLOOR_MS))


def clip_point(point: np.ndarray, floor: float) -> np.ndarray:
    return np.maximum(np.asarray(point, np.float64), floor)


def scale_of(point: np.ndarray, fixed_scale: float | None = None) -> np.ndarray:
    """The residuals' scale per row: the point, or ``fixed_scale`` for every row
    (a calibration's ``fixed_scale``: additive offsets)."""
    if fixed_scale is not None:
        return np.full(np.shape(point), fixed_scale, dtype=np.float64)
    return np.maximum(np.asarray(point, np.float64), SCALE_FLOOR_MS)


NORMALISATIONS = ("relative", "additive")


def fixed_scale_for(point: np.ndarray, normalise: str) -> float | None:
    """The constant scale of an "additive" calibration: the median calibration point,
    so its offsets read as shares of a typical point, like relative ones."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalise!r}")
    if normalise == "relative":
        return None
    return max(float(np.median(point)), SCALE_FLOOR_MS)


def calibrate(
    point: np.ndarray,
    y: np.ndarray,
    regime_ids: np.ndarray,
    quantile: float,
    mode: str = "mondrian",
    normalise: str = "relative",
) -> MondrianCalibration:
    """Offsets on normalised signed residuals ``(y - point) / scale``.

    ``point``: the points as served, already clipped at their model's floor
    (:func:`clip_point`), so the offsets are those of the served bound. ``scale``:
    the point, or with ``normalise="additive"`` one constant (:func:`fixed_scale_for`).

    "mondrian": per regime, non-decreasing in queue depth (per KV bucket,
    :func:`pooled_in_depth`, then :func:`monotone_in_depth` for the rare regimes): a
    deeper queue must never get a smaller relative margin, or the bound could drop
    when a request starts waiting ("more load never lowers the prediction").
    "two_sided": one pooled offset, the order statistic of the signed residuals,
    negative when the trees already over-cover: a quantile model is moved toward
    the level from either side, never only widened. "none": no offset.
    """
    fixed = fixed_scale_for(point, normalise)
    scale = scale_of(point, fixed)
    if mode == "none":
        return MondrianCalibration(q=quantile, pooled=0.0, per_group={})
    if mode == "two_sided":
        pooled = MondrianCalibration.fit(
            np.asarray(y, np.float64) - point,
            np.zeros(len(point), np.int64),
            quantile,
            scale=scale,
            min_group_size=len(point) + 1,
        ).pooled
        return MondrianCalibration(q=quantile, pooled=pooled, per_group={}, fixed_scale=fixed)
    if mode != "mondrian":
        raise ValueError(f"unknown calibration {mode!r}")
    residuals = (np.asarray(y, np.float64) - point) / scale
    fitted = MondrianCalibration.fit(
        residuals, regime_ids, quantile, min_group_size=MIN_REGIME_CALIBRATION
    )
    # Regimes too rare for an offset of their own share one, calibrated on their
    # rows together (not the pooled one, set by the common regimes' residuals):
    # every row's offset then comes from rows of its own group.
    rare = ~np.isin(regime_ids, list(fitted.per_group))
    fallback = fitted.pooled
    if rare.sum() >= MIN_REGIME_CALIBRATION:
        fallback = MondrianCalibration.fit(
            residuals[rare], np.zeros(int(rare.sum()), np.int64), quantile, min_group_size=1
        ).pooled
    own = pooled_in_depth(residuals, regime_ids, fitted.per_group, quantile)
    grid = monotone_in_depth(own, fallback)
    return MondrianCalibration(
        q=fitted.q,
        pooled=fitted.pooled,
        per_group={regime: float(grid[regime]) for regime in range(NUM_REGIMES)},
        fixed_scale=fixed,
    )


def pooled_in_depth(
    residuals: np.ndarray, regime_ids: np.ndarray, own: dict[int, float], quantile: float
) -> dict[int, float]:
    """``own`` (each regime's offset on its own ``residuals``) made non-decreasing in
    queue depth within each KV bucket by pooling adjacent violators: where a deeper
    regime's offset is below the shallower one's, the two are calibrated as one
    group on their residuals together (repeated until none violates). Each offset is then the conformal quantile of a
    group of its own rows and its neighbours', never another regime's maximum: one
    regime whose few rows came from a different workload lifts its neighbours by
    its share of the pooled rows, not by its whole excess."""
    depths = len(WAITING_EDGES) + 1
    buckets = NUM_REGIMES // depths
    out: dict[int, float] = {}
    for k in range(buckets):
        blocks: list[tuple[list[int], np.ndarray, float]] = []
        for w in range(depths):
            regime = w * buckets + k
            if regime not in own:
                continue
            block = ([regime], residuals[regime_ids == regime], own[regime])
            while blocks and block[2] < blocks[-1][2]:
                regimes_, rows_, _ = blocks.pop()
                merged = np.concatenate([rows_, block[1]])
                block = (regimes_ + block[0], merged, float(conformal_offset(merged, quantile)))
            blocks.append(block)
        for regimes_, _, offset in blocks:
            out.update(dict.fromkeys(regimes_, offset))
    return out


def monotone_in_depth(own: dict[int, float], fallback: float) -> np.ndarray:
    """Offsets per regime, non-decreasing in queue depth within each KV bucket.

    ``own``: offsets of the regimes with enough residuals to be calibrated alone,
    already non-decreasing in depth within each KV bucket (:func:`pooled_in_depth`),
    kept as they are. A regime without its own offset takes ``fallback`` (the rare
    regimes' shared offset), clipped between its calibrated neighbours in the same
    KV bucket: at least the shallower one's offset, at most the deeper one's. The
    constraint holds without a rare regime ever raising a calibrated one, whose own
    residuals say its offset is enough (under overload the rare transitional
    regimes' large offset would otherwise lift the deepest regime, which holds most
    rows, and over-cover it).
    """
    depths, buckets = len(WAITING_EDGES) + 1, NUM_REGIMES // (len(WAITING_EDGES) + 1)
    grid = np.empty((depths, buckets), dtype=np.float64)
    for k in range(buckets):
        calibrated = {w: own[w * buckets + k] for w in range(depths) if w * buckets + k in own}
        for w in range(depths):
            if w in calibrated:
                grid[w, k] = calibrated[w]
                continue
            below = max((v for d, v in calibrated.items() if d < w), default=-np.inf)
            above = min((v for d, v in calibrated.items() if d > w), default=np.inf)
            grid[w, k] = min(max(fallback, below), above)
    return grid.reshape(-1)


def upper_bound(
    point: np.ndarray, calibration: MondrianCalibration, regime_ids: np.ndarray, floor: float
) -> np.ndarray:
    """Calibrated upper bound of the trees' ``point`` clipped at ``floor`` (the
    model's :func:`point_floor`), then at 0 (a two-sided offset can be below -1)."""
    point = clip_point(point, floor)
    upper = calibration.upper(point, regime_ids, scale=scale_of(point, calibration.fixed_scale))
    return np.maximum(upper, 0.0)


@dataclass
class TargetModel:
    """Trees + calibration of one target: what a bundle stores per target."""

    target: str
    quantile: float
    objective: str
    booster: xgb.Booster
    calibration: MondrianCalibration
    # :func:`point_floor` of the rows the trees were fitted on.
    point_floor_ms: float

    def point(self, x: np.ndarray) -> np.ndarray:
        """The served point (ms): the trees' point clipped at the floor."""
        return clip_point(predict_booster(self.booster, x, self.objective), self.point_floor_ms)

    def predict(self, x: np.ndarray, regime_ids: np.ndarray) -> np.ndarray:
        point = predict_booster(self.booster, x, self.objective)
        return upper_bound(point, self.calibration, regime_ids, self.point_floor_ms)

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``<target>.ubj`` and ``<target>.calibration.json``; returns file names."""
        trees = f"{self.target}.ubj"
        calib = f"{self.target}.calibration.json"
        self.booster.save_model(directory / trees)
        (directory / calib).write_text(
            json.dumps(
                {
                    "quantile": self.quantile,
                    "objective": self.objective,
                    "point_floor_ms": self.point_floor_ms,
                    "mondrian": self.calibration.to_dict(),
                }
            )
        )
        return {"trees": trees, "calibration": calib}


def load_target_model(directory: Path, target: str, files: dict[str, str]) -> TargetModel:
    """Inverse of :meth:`TargetModel.save` (hashes are verified by the bundle reader)."""
    calib = json.loads((directory / files["calibration"]).read_text())
    booster = xgb.Booster(model_file=str(directory / files["trees"]))
    return TargetModel(
        target,
        float(calib["quantile"]),
        calib["objective"],
        booster,
        MondrianCalibration.from_dict(calib["mondrian"]),
        stored_point_floor(calib),
    )


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
    booster: xgb.Booster | None = None,
) -> TargetModel:
    """Split conformal: trees on the training rows, offsets on the calibration rows.

    ``booster``: trees already fitted with ``params.trees()`` on the same rows (candidates
    that differ only in calibration share one fit).
    """
    if booster is None:
        booster = fit_booster(train_x, train_y, quantile, params, seed)
    floor = point_floor(train_y)
    point = clip_point(predict_booster(booster, calib_x, params.objective), floor)
    calibration = calibrate(
        point, calib_y, calib_regimes, quantile, params.calibration, params.normalise
    )
    return TargetModel(target, quantile, params.objective, booster, calibration, floor)


# Folds of the cross-conformal fits. Each fold model trains on (folds - 1) / folds of
# the rows while the served trees train on all of them, so fold residuals run a
# little larger than the served model's and its bound over-covers; more folds keep
# the two closer (measured in docs/latency.md, "ten folds").
CROSS_CONFORMAL_FOLDS = 10


def _out_of_fold_points(
    x: np.ndarray,
    y: np.ndarray,
    fold: np.ndarray,
    folds: int,
    quantile: float,
    params: TreeParams,
    seed: int,
) -> np.ndarray:
    """Every row's point from the model fitted on the other folds, clipped at that
    model's own floor (of its training rows, as a served model's)."""
    out_of_fold = np.empty(y.shape[0], dtype=np.float64)
    for k in range(folds):
        held = fold == k
        booster = fit_booster(x[~held], y[~held], quantile, params, seed + 1 + k)
        point = predict_booster(booster, x[held], params.objective)
        out_of_fold[held] = clip_point(point, point_floor(y[~held]))
    return out_of_fold


def one_se_choice(losses: list[np.ndarray]) -> int:
    """The candidate to serve from per-row validation losses (one array per
    candidate, the same rows): the lowest mean loss, unless it beats candidate 0 by
    no more than the standard error of their paired per-row difference.

    The first candidate (the served default, monotone) is kept on a smaller gain,
    which is selection noise (on one ShareGPT TTFT split plain argmin picked the
    upstream trees and lifted the 10-seed ratio to the reference from 0.82 to 0.89).
    Used by :func:`fit_selected` and by the streaming trainer's promotion.
    """
    chosen = int(np.argmin([float(np.mean(loss)) for loss in losses]))
    if chosen != 0:
        gain = losses[0] - losses[chosen]
        if gain.mean() <= gain.std(ddof=1) / np.sqrt(gain.shape[0]):
            chosen = 0
    return chosen


@dataclass(frozen=True)
class Selection:
    """Validation scores of every candidate (cross-validated inside the fit rows)."""

    pinball: tuple[float, ...]
    coverage: tuple[float, ...]
    chosen: int


def fit_selected(
    target: str,
    x: np.ndarray,
    y: np.ndarray,
    regime_ids: np.ndarray,
    quantile: float,
    candidates: tuple[TreeParams, ...],
    seed: int,
    folds: int = CROSS_CONFORMAL_FOLDS,
) -> tuple[TargetModel, Selection]:
    """Cross-conformal fit of the candidate with the lowest validation pinball loss
    (the first candidate unless another beats it by more than one standard error).

    Every candidate's trees are fitted on ``folds`` folds' complements (out-of-fold
    points for every row) and on all rows (the served trees): cross-conformal. For
    small offline datasets (protocol B's ~1,500 rows per target) a held-out
    calibration split would starve the trees; here every row is predicted by a model
    fitted without it, and the served offsets come from those out-of-fold residuals
    (for this model version only). A candidate is scored, per fold, by its bound on
    that fold: out-of-fold points plus offsets calibrated on the *other* folds'
    out-of-fold residuals, so neither its trees nor its offsets saw the scored
    rows. Only ``x, y`` are read: callers pass the training part, never test rows.
    Candidates with the same trees (differing only in calibration) share fits. The
    upstream configuration (:data:`UPSTREAM_PARAMS`, no offset) fitted with
    ``seed`` is exactly the reference, so choosing it reproduces the reference.
    """
    n = y.shape[0]
    fold = np.random.default_rng(seed).permutation(n) % folds
    fits: dict[TreeParams, np.ndarray] = {}
    scores, covers, losses = [], [], []
    y64 = np.asarray(y, np.float64)
    for params in candidates:
        key = params.trees()
        if key not in fits:
            fits[key] = _out_of_fold_points(x, y, fold, folds, quantile, params, seed)
        out_of_fold = fits[key]
        bound = np.empty(n, dtype=np.float64)
        for k in range(folds):
            held = fold == k
            calib = calibrate(
                out_of_fold[~held],
                y64[~held],
                regime_ids[~held],
                quantile,
                params.calibration,
                params.normalise,
            )
            # Already clipped at the fold model's floor (a no-op here).
            bound[held] = upper_bound(
                out_of_fold[held], calib, regime_ids[held], point_floor(y64[~held])
            )
        residual = y64 - bound
        losses.append(np.maximum(quantile * residual, (quantile - 1) * residual))
        scores.append(float(np.mean(losses[-1])))
        covers.append(float(np.mean(y64 <= bound)))
    chosen = one_se_choice(losses)
    params = candidates[chosen]
    booster = fit_booster(x, y, quantile, params, seed)
    out_of_fold = fits[params.trees()]
    calibration = calibrate(
        out_of_fold, y64, regime_ids, quantile, params.calibration, params.normalise
    )
    model = TargetModel(target, quantile, params.objective, booster, calibration, point_floor(y64))
    return model, Selection(tuple(scores), tuple(covers), chosen)
