"""The forest kernel (``_native/forest.c``) through Python, on arrays.

- Its predictions equal XGBoost's, bit for bit, on random forests of depth 0-10,
  missing values included (XGBoost's default directions), on the AVX2 and the
  scalar path, for 1, 7, 8, 9 and 1000 rows.
- Shallow forests (depth 1-2: 2-4 leaves per tree) over 8+ rows, the case where the
  AVX2 path once read past the leaf table, are exact; the tables pad every leaf row
  to 8 floats and the kernel refuses a table that is not padded.
- Malformed tables and arrays (dtype, layout, shape, node count, feature index,
  read-only output, not a buffer) raise ValueError/TypeError.
- The fuzz target (fuzz_forest.py) holds on random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from slocast._native import _core
from slocast.latency import native

ROW_COUNTS = (1, 7, 8, 9, 1000)


def forest(depth: int, rounds: int = 12, *, missing: float = 0.0, seed: int = 0, **params):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1500, 9)).astype(np.float32)
    y = x[:, 0] * 3 + np.sin(4 * x[:, 1]) + x[:, 2] * x[:, 3] + rng.normal(0, 0.1, 1500)
    if missing:
        # missing where the label is high for one feature, low for another: XGBoost
        # learns default directions of both kinds
        x[(rng.random(x.shape) < missing)] = np.nan
    params = {"max_depth": depth, "min_child_weight": 0, "nthread": 1, "seed": seed, **params}
    return xgb.train(params, xgb.DMatrix(x, label=y), rounds)


def rows(n: int, features: int = 9, missing: float = 0.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    x[rng.random(x.shape) < missing] = np.nan
    return x


def assert_equals_xgboost(booster: xgb.Booster, x: np.ndarray) -> None:
    engine = native.NativeForest(native.forest_tables(booster))
    want = booster.inplace_predict(x)
    for simd in (True, False):
        np.testing.assert_array_equal(engine.predict(x, simd=simd), want, err_msg=f"simd={simd}")


@pytest.mark.parametrize("depth", range(1, 11))
def test_kernel_equals_xgboost_at_every_depth(depth: int) -> None:
    booster = forest(depth, seed=depth)
    tables = native.forest_tables(booster)
    assert tables.depth == depth and tables.leaf.shape[1] == max(8, 2**depth)
    for n in ROW_COUNTS:
        assert_equals_xgboost(booster, rows(n, seed=n))


@pytest.mark.parametrize("depth", [1, 3, 6, 9])
def test_missing_values_take_xgboosts_default_directions(depth: int) -> None:
    booster = forest(depth, missing=0.2, seed=depth)
    tables = native.forest_tables(booster)
    real = np.isfinite(tables.thr)
    assert set(tables.dleft[real].tolist()) == {0, 1}  # both default directions occur
    for n in ROW_COUNTS:
        assert_equals_xgboost(booster, rows(n, missing=0.3, seed=n))
    # a NaN in the first row only: every block but one takes the fast path
    x = rows(1000)
    x[0, :] = np.nan
    assert_equals_xgboost(booster, x)


@pytest.mark.parametrize("depth", [1, 2])
def test_shallow_forests_over_eight_rows(depth: int) -> None:
    booster = forest(depth, rounds=40, eta=0.3)
    tables = native.forest_tables(booster)
    assert tables.depth == depth and tables.leaf.shape == (40, 8)
    assert not tables.leaf[:, 2**depth :].any()  # padding, never selected
    for n in (8, 9, 15, 16, 17, 1000):
        assert_equals_xgboost(booster, rows(n, seed=n))


def test_single_leaf_trees_and_objectives_with_an_output_transform() -> None:
    x = rows(400)
    constant = xgb.train({"nthread": 1}, xgb.DMatrix(x, label=np.full(400, 3.0)), 5)
    assert native.forest_tables(constant).depth == 0
    assert_equals_xgboost(constant, rows(9))
    positive = np.exp(x[:, 0]) + 0.1
    for objective in ("reg:gamma", "reg:tweedie"):
        booster = xgb.train(
            {"objective": objective, "max_depth": 4, "nthread": 1},
            xgb.DMatrix(x, label=positive),
            20,
        )
        engine = native.native_forest(booster)  # checked against XGBoost on probe rows
        fresh = rows(1000, seed=7)
        np.testing.assert_allclose(engine.predict(fresh), booster.inplace_predict(fresh), rtol=2e-6)


def test_models_it_cannot_represent_are_served_by_xgboost(caplog) -> None:
    deep = forest(native.MAX_DEPTH + 2, rounds=3)
    with pytest.raises(native.UnsupportedForest, match="deeper"):
        native.forest_tables(deep)
    assert native.make_engine(deep, native.ENGINE_NATIVE, "deep").name == native.ENGINE_XGBOOST
    assert "served by XGBoost" in caplog.text
    shallow = forest(3)
    assert native.make_engine(shallow, native.ENGINE_XGBOOST, "s").name == native.ENGINE_XGBOOST
    assert native.make_engine(shallow, native.ENGINE_NATIVE, "s").name.startswith("native")


# --- malformed input ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables() -> native.ForestTables:
    return native.forest_tables(forest(2, rounds=5))


def call(tables: native.ForestTables, **replace) -> None:
    args = {
        "x": rows(10),
        "feat": tables.feat,
        "thr": tables.thr,
        "dleft": tables.dleft,
        "leaf": tables.leaf,
        "base": tables.base,
        "out": np.empty(10, np.float32),
        **replace,
    }
    _core.forest_predict(**args)


def test_well_formed_call_runs(tables) -> None:
    call(tables)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda t: {"x": rows(10).astype(np.float64)}, TypeError, "x must hold 'f'"),
        (lambda t: {"x": rows(10, 18)[:, ::2]}, ValueError, "C-contiguous"),
        (lambda t: {"x": rows(10).reshape(-1)}, ValueError, "dimensions"),
        (lambda t: {"x": rows(10).tolist()}, TypeError, "bytes-like"),
        (lambda t: {"x": rows(10).astype(">f4")}, TypeError, "x must hold"),
        (lambda t: {"x": rows(10, int(t.feat.max()))}, ValueError, "not a column of x"),
        (lambda t: {"feat": t.feat.astype(np.int64)}, TypeError, "feat"),
        (lambda t: {"feat": np.full_like(t.feat, -1)}, ValueError, "not a column"),
        (lambda t: {"feat": np.full_like(t.feat, 9)}, ValueError, "not a column"),
        (lambda t: {"thr": t.thr[:, :2].copy()}, ValueError, "shape of feat"),
        (lambda t: {"dleft": t.dleft.astype(bool)}, TypeError, "dleft"),
        # the table that once let the AVX2 path read past it: 4 leaves, not 8
        (lambda t: {"leaf": t.leaf[:, :4].copy()}, ValueError, "leaf must have shape"),
        (lambda t: {"leaf": t.leaf[:-1].copy()}, ValueError, "leaf must have shape"),
        (lambda t: {"out": np.empty(9, np.float32)}, ValueError, "out has 9 rows"),
        (lambda t: {"out": np.empty(10, np.float64)}, TypeError, "out"),
        (lambda t: {"out": np.empty(10, np.float32)[::-1]}, ValueError, "C-contiguous"),
        (lambda t: {"base": "zero"}, TypeError, "real number"),
    ],
)
def test_malformed_arrays_raise(tables, change, error, match) -> None:
    with pytest.raises(error, match=match):
        call(tables, **change(tables))


def test_read_only_output_and_impossible_node_counts_raise(tables) -> None:
    frozen = np.empty(10, np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError):
        call(tables, out=frozen)
    for nodes in (2, 4, 2047):  # not 2**depth - 1, or deeper than 10
        table = np.zeros((3, nodes), np.int32)
        with pytest.raises(ValueError, match="nodes per tree"):
            call(
                tables,
                feat=table,
                thr=table.astype(np.float32),
                dleft=table.astype(np.uint8),
                leaf=np.zeros((3, 8), np.float32),
            )


def test_fuzz_target_on_random_inputs() -> None:
    pytest.importorskip("atheris")
    from tests.native import fuzz_forest

    rng = np.random.default_rng(0)
    for _ in range(2000):
        fuzz_forest.one_input(rng.bytes(int(rng.integers(0, 5000))))
