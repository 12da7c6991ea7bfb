"""Tree engines of the latency prediction server.

Two ways to compute one XGBoost prediction, chosen by configuration
(``SLOCAST_LATENCY_ENGINE``, docs/latency.md):

- ``native`` (default): the model's trees as padded complete trees of one depth
  (:class:`ForestTables`, built here from XGBoost's own JSON dump of the booster),
  evaluated by ``slocast._native._core.forest_predict`` (``_native/forest.c``):
  branch-free index arithmetic, eight rows at a time, AVX2 where the CPU has it.
- ``xgboost``: ``Booster.inplace_predict``; also the counted fallback for a model
  the tables cannot represent (categorical splits, vector leaves, trees deeper than
  :data:`MAX_DEPTH`, an objective whose output transform is not listed here) or that
  disagrees with XGBoost on probe rows at load.

Both return XGBoost's prediction (its output transform applied) as float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import msgspec
import numpy as np
import xgboost as xgb

from slocast._native import _core
from slocast.settings import LATENCY_ENGINES

log = logging.getLogger(__name__)

ENGINE_NATIVE, ENGINE_XGBOOST = LATENCY_ENGINES
# Padded complete trees hold 2**depth leaves: deeper models are served by XGBoost.
MAX_DEPTH = 10
# Leaf rows are at least this wide so the AVX2 path's 8-float loads stay in a row.
MIN_LEAVES = 8
# XGBoost objectives by output transform: identity, or exp of the margin (log link,
# whose base_score XGBoost stores as a response, so the margin starts at its log).
IDENTITY_OBJECTIVES = frozenset(
    {"reg:squarederror", "reg:quantileerror", "reg:absoluteerror", "reg:pseudohubererror"}
)
LOG_LINK_OBJECTIVES = frozenset({"reg:gamma", "reg:tweedie", "count:poisson"})


class UnsupportedForest(ValueError):
    """The model cannot be represented as padded complete trees."""


class Engine(Protocol):
    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """XGBoost's prediction (float32) for a float32 ``(rows, features)``."""
        ...


@dataclass(frozen=True)
class ForestTables:
    """One forest in the layout ``_native/forest.c`` reads (see its header)."""

    feat: np.ndarray  # int32 (trees, 2**depth - 1)
    thr: np.ndarray  # float32, same shape
    dleft: np.ndarray  # uint8, same shape
    leaf: np.ndarray  # float32 (trees, max(MIN_LEAVES, 2**depth))
    base: float  # margin every prediction starts from
    num_features: int
    exp_output: bool  # log-link objective: the prediction is exp(margin)

    @property
    def depth(self) -> int:
        return int(self.feat.shape[1] + 1).bit_length() - 1

    def margin(self, x: np.ndarray, *, simd: bool = True) -> np.ndarray:
        out = np.empty(x.shape[0], dtype=np.float32)
        _core.forest_predict(
            x, self.feat, self.thr, self.dleft, self.leaf, self.base, out, simd=simd
        )
        return out


def _trees_of(model: dict) -> tuple[list[dict], float, bool, int]:
    """The trees, start margin, output transform and width of XGBoost's JSON model."""
    learner = model["learner"]
    booster = learner["gradient_booster"]
    objective = learner["objective"]["name"]
    if booster["name"] != "gbtree":
        raise UnsupportedForest(f"booster {booster['name']}")
    if objective not in IDENTITY_OBJECTIVES | LOG_LINK_OBJECTIVES:
        raise UnsupportedForest(f"objective {objective}")
    param = learner["learner_model_param"]
    scores = str(param["base_score"]).strip("[]").split(",")
    if int(param.get("num_target", 1)) != 1 or int(param.get("num_class", 0)) > 1:
        raise UnsupportedForest("only single-output regression forests")
    if len(scores) != 1:
        raise UnsupportedForest("vector base score")
    base = np.float32(scores[0])
    exp_output = objective in LOG_LINK_OBJECTIVES
    if exp_output:
        base = np.log(base)
    return booster["model"]["trees"], float(base), exp_output, int(param["num_feature"])


def forest_tables(booster: xgb.Booster) -> ForestTables:
    """The booster's trees as padded complete trees (raises :class:`UnsupportedForest`).

    All trees' nodes go into flat arrays, then the padded layout is built level by
    level for every tree at once: a few NumPy operations per level, no Python per node.
    """
    model = msgspec.json.decode(bytes(booster.save_raw("json")))
    trees, base, exp_output, num_features = _trees_of(model)
    if not trees:
        raise UnsupportedForest("no trees")
    sizes = np.array([len(t["left_children"]) for t in trees], dtype=np.int64)
    start = np.concatenate(([0], np.cumsum(sizes)[:-1]))

    def flat(key: str, dtype) -> np.ndarray:
        return np.concatenate([np.asarray(t[key], dtype=dtype) for t in trees])

    left, right = flat("left_children", np.int64), flat("right_children", np.int64)
    feat, cond = flat("split_indices", np.int64), flat("split_conditions", np.float32)
    dleft = flat("default_left", np.uint8)
    if flat("split_type", np.int64).any():
        raise UnsupportedForest("categorical splits")
    if any(int(t["tree_param"].get("size_leaf_vector", 1)) > 1 for t in trees):
        raise UnsupportedForest("vector leaves")
    is_leaf = left < 0
    owner_size = np.repeat(sizes, sizes)
    split = ~is_leaf
    if (
        (left[split] >= owner_size[split]).any()
        or (right[split] < 0).any()
        or (right[split] >= owner_size[split]).any()
        or (feat[split] < 0).any()
        or (feat[split] >= num_features).any()
    ):
        raise UnsupportedForest("node or feature index out of range")
    offset = np.repeat(start, sizes)
    left, right = left + offset, right + offset  # global node ids
    slots = start[:, None]  # the node id in each slot of the current level
    levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    while not is_leaf[slots].all():
        if len(levels) == MAX_DEPTH:
            raise UnsupportedForest(f"trees deeper than {MAX_DEPTH}")
        here = is_leaf[slots]
        levels.append(
            (
                np.where(here, 0, feat[slots]),
                np.where(here, np.float32(np.inf), cond[slots]),
                np.where(here, 0, dleft[slots]),
            )
        )
        # a leaf above the last level fills both halves of its padded subtree
        lo, hi = np.where(here, slots, left[slots]), np.where(here, slots, right[slots])
        slots = np.stack((lo, hi), axis=2).reshape(len(trees), -1)
    width = max(MIN_LEAVES, slots.shape[1])
    leaf = np.zeros((len(trees), width), dtype=np.float32)
    leaf[:, : slots.shape[1]] = cond[slots]

    def level_table(i: int, dtype) -> np.ndarray:
        if not levels:
            return np.zeros((len(trees), 0), dtype=dtype)
        return np.ascontiguousarray(np.concatenate([lv[i] for lv in levels], axis=1), dtype)

    return ForestTables(
        feat=level_table(0, np.int32),
        thr=level_table(1, np.float32),
        dleft=level_table(2, np.uint8),
        leaf=leaf,
        base=base,
        num_features=num_features,
        exp_output=exp_output,
    )


def _features(x: np.ndarray, num_features: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != num_features:
        raise ValueError(f"expected (rows, {num_features}) features, got {x.shape}")
    return x


class NativeForest:
    """The ``native`` engine: :class:`ForestTables` evaluated by ``_native/forest.c``."""

    def __init__(self, tables: ForestTables) -> None:
        self.tables = tables
        simd = _core.forest_simd() and 1 <= tables.depth <= 6 and tables.num_features <= 64
        self.name = f"{ENGINE_NATIVE}-avx2" if simd else ENGINE_NATIVE

    def predict(self, x: np.ndarray, *, simd: bool = True) -> np.ndarray:
        """``simd=False``: the scalar code even where AVX2 is available (tests)."""
        tables = self.tables
        out = tables.margin(_features(x, tables.num_features), simd=simd)
        return np.exp(out, out=out) if tables.exp_output else out


class XGBoostForest:
    """The ``xgboost`` engine: XGBoost's own in-place prediction."""

    name = ENGINE_XGBOOST

    def __init__(self, booster: xgb.Booster) -> None:
        # One thread: every worker process is one request at a time on its own core.
        booster.set_param({"nthread": 1})
        self.booster = booster
        self.num_features = booster.num_features()

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = _features(x, self.num_features)
        return np.asarray(self.booster.inplace_predict(x), dtype=np.float32).reshape(-1)


def probe_rows(tables: ForestTables, rows: int = 512, seed: int = 0, missing: float = 0.0):
    """Rows on both sides of the forest's own thresholds (a fraction ``missing`` of
    values NaN), so an agreement check exercises the splits, not one corner."""
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, tables.num_features), dtype=np.float32)
    for f in range(tables.num_features):
        cuts = tables.thr[(tables.feat == f) & np.isfinite(tables.thr)]
        if cuts.size == 0:
            x[:, f] = rng.random(rows, dtype=np.float32)
            continue
        at = rng.choice(cuts, rows)
        side = rng.integers(-1, 2, rows)  # just below, at, just above a threshold
        below, above = np.nextafter(at, -np.inf), np.nextafter(at, np.inf)
        x[:, f] = np.where(side < 0, below, np.where(side > 0, above, at))
    x[rng.random((rows, tables.num_features)) < missing] = np.nan
    return x


def native_forest(booster: xgb.Booster) -> NativeForest:
    """The native engine of ``booster``, checked equal to XGBoost on probe rows
    (missing values included: the kernel has a separate path for them). Raises
    :class:`UnsupportedForest` when it cannot serve this model."""
    forest = NativeForest(forest_tables(booster))
    reference = XGBoostForest(booster)
    for missing in (0.0, 0.02):
        x = probe_rows(forest.tables, missing=missing)
        got = forest.predict(x).astype(np.float64)
        want = reference.predict(x).astype(np.float64)
        tolerance = 1e-5 * max(1.0, float(np.max(np.abs(want))))
        if not np.allclose(got, want, rtol=1e-5, atol=tolerance):
            worst = float(np.max(np.abs(got - want)))
            raise UnsupportedForest(f"disagrees with XGBoost on probe rows (max |diff| {worst:g})")
    return forest


def make_engine(booster: xgb.Booster, configured: str, what: str) -> Engine:
    """The configured engine for ``booster``; XGBoost (logged) when native cannot serve."""
    if configured == ENGINE_NATIVE:
        try:
            return native_forest(booster)
        except UnsupportedForest as exc:
            log.warning("%s served by XGBoost: %s", what, exc)
    return XGBoostForest(booster)
