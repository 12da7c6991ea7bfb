"""The C feature kernel equals XGBoostForecaster.features (the NumPy definition).

Every window of series of several kinds and window lengths, alone and batched,
bit for bit after the float32 cast; non-finite windows are refused (the NumPy
path then serves them). Series come from the speed-equivalence test's generator.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_feature_speed_equivalence import _series, _spec

from slocast.core.schema import TARGET_INDEX
from slocast.models import xgboost_native
from slocast.models.xgboost_forecaster import XGBoostForecaster

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return xgboost_native.build(tmp_path_factory.mktemp("native")).library


def _numpy_features(spec, times, values, ends):
    """The definition: XGBoostForecaster.features without a kernel attached."""
    return XGBoostForecaster(spec).features(times, values, ends)


@pytest.mark.parametrize("kind", ["random", "heavy", "ties", "idle"])
@pytest.mark.parametrize("window", [10, 1, 2, 3, 5, 12])
def test_kernel_equals_numpy_on_every_window(library, kind, window):
    rng = np.random.default_rng([window, ord(kind[0]), 5])
    spec = _spec(rng, window)
    times, values = _series(rng, spec, window + 400, kind)
    kernel = xgboost_native.NativeFeatures(library, spec, TARGET_INDEX)
    ends = np.arange(window, len(values) + 1, dtype=np.int64)
    want = _numpy_features(spec, times, values, ends)
    got = kernel.features(times, values, ends)
    assert got is not None and got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    for i in range(0, len(ends), 37):  # single windows: the single-forecast request
        np.testing.assert_array_equal(
            kernel.features(times, values, ends[i : i + 1]), want[i : i + 1]
        )


def test_kernel_equals_numpy_on_stacked_histories(library):
    """The server's layout: independent histories end to end, end = k * rows."""
    rng = np.random.default_rng(8)
    spec = _spec(rng, 10)
    times, values = _series(rng, spec, 10 * 1000, "heavy")
    ends = np.arange(1, 1001, dtype=np.int64) * 10
    kernel = xgboost_native.NativeFeatures(library, spec, TARGET_INDEX)
    np.testing.assert_array_equal(
        kernel.features(times, values, ends), _numpy_features(spec, times, values, ends)
    )


def test_kernel_refuses_non_finite_windows_and_bad_ends(library):
    rng = np.random.default_rng(9)
    spec = _spec(rng, 10)
    times, values = _series(rng, spec, 40, "random")
    values[25, 3] = np.nan
    values[32, 1] = -np.inf  # +inf would be clipped to the cap and stay finite
    kernel = xgboost_native.NativeFeatures(library, spec, TARGET_INDEX)
    assert kernel.features(times, values, np.array([20])) is not None
    for ends in ([26], [35], [20, 30]):
        assert kernel.features(times, values, np.array(ends)) is None
    for ends in ([9], [41], [10, 41]):
        with pytest.raises(IndexError):
            kernel.features(times, values, np.array(ends))


def test_kernel_is_built_once_and_verified(tmp_path):
    first = xgboost_native.build(tmp_path)
    stamp = first.library.stat().st_mtime_ns
    assert xgboost_native.build(tmp_path).library.stat().st_mtime_ns == stamp  # cached
    first.library.write_bytes(first.library.read_bytes() + b"\0")  # corrupt: rebuilt
    spec = _spec(np.random.default_rng(1), 10)
    kernel = xgboost_native.load(tmp_path, spec, TARGET_INDEX)
    assert kernel is not None
    assert first.library.stat().st_mtime_ns != stamp


@pytest.fixture(scope="module")
def boosters(tmp_path_factory):
    """Three small compiled XGBoost models: (tl2cgen.Predictor, library path)."""
    tl2cgen = pytest.importorskip("tl2cgen")
    import xgboost as xgb

    from slocast.core import compiled_trees as ct

    rng = np.random.default_rng(0)
    x = rng.random((1500, 8), dtype=np.float32)
    root = tmp_path_factory.mktemp("trees")
    out = []
    for k in range(3):
        y = k + 10 * x[:, k] - 5 * x[:, k + 1] * x[:, k + 2] + rng.normal(0, 0.1, len(x))
        booster = xgb.train(
            {"objective": "reg:squarederror", "max_depth": 3, "nthread": 1},
            xgb.DMatrix(x, label=y),
            25,
        )
        path = root / f"model{k}.json"
        booster.save_model(path)
        library = ct.ensure_compiled(path, root / "lib").library
        out.append((tl2cgen.Predictor(library, nthread=1), library))
    return out


@pytest.mark.parametrize("rows", [0, 1, 7, 500])
def test_tree_rows_equal_tl2cgen(library, boosters, rows):
    """All boosters from one C loop give TL2cgen's own outputs, missing values included."""
    import tl2cgen

    spec = _spec(np.random.default_rng(2), 10)
    kernel = xgboost_native.NativeFeatures(library, spec, TARGET_INDEX)
    trees = xgboost_native.TreeRows(kernel, [lib for _, lib in boosters], 8)
    x = np.random.default_rng(rows).random((rows, 8), dtype=np.float32) * 1.2 - 0.1
    x[::3, rows % 8] = np.nan
    got = trees.predict(x)
    assert got.shape == (len(boosters), rows) and got.dtype == np.float32
    if rows:
        dmat = tl2cgen.DMatrix(x)
        for i, (predictor, _) in enumerate(boosters):
            np.testing.assert_array_equal(got[i], predictor.predict(dmat).reshape(-1))
    np.testing.assert_array_equal(trees.predict(x), got)  # no accumulation across calls
    with pytest.raises(ValueError):
        trees.predict(np.zeros((2, 9), np.float32))
