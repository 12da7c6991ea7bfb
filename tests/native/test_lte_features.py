"""The LTE kernels of ``slocast._native._core`` (source ``_native/lte.c``), on arrays.

The feature kernel equals the NumPy reference (``core.features.window_features``)
on every window of real-ish series: the synthetic site, random walks, rows above
the caps, NaN gaps (raw and under the fill rule), ties and idle windows, windows
of 1 to 200 rows. Every malformed argument raises ValueError/TypeError; nothing
crashes (the sanitizer build runs this file too).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from kernel_calls import assert_output_and_arity_checked, assert_refused

from slocast._native import _core
from slocast.core.features import (
    EWM,
    FEATURE_BLOCKS,
    FeatureSpec,
    fill_missing,
    kernel_layout,
    window_ends,
    window_features,
)
from slocast.core.schema import FEATURE_COLUMNS, TARGET_INDEX
from slocast.core.synthetic import generate_lte
from slocast.serve.kernels import NativeFeatures

C = len(FEATURE_COLUMNS)
STEP = np.timedelta64(120, "s")


def _spec(values: np.ndarray, window: int) -> FeatureSpec:
    return FeatureSpec.fit(
        values[: len(values) // 2], window=window, horizon=2, step_seconds=120.0, cap_quantile=0.95
    )


def _times(n: int, start: str = "2018-01-27T23:58:00") -> np.ndarray:
    return np.datetime64(start, "ns") + np.arange(n) * STEP


def _synthetic(rows: int) -> tuple[np.ndarray, np.ndarray]:
    frame = generate_lte(rows, seed=4)
    return frame["time"].to_numpy().astype("datetime64[ns]"), frame[list(FEATURE_COLUMNS)].to_numpy(
        np.float64
    )


def _random_walk(rng: np.random.Generator, rows: int) -> np.ndarray:
    scale = 10.0 ** rng.integers(-3, 9, C)
    walk = np.exp(np.cumsum(rng.normal(0, 0.2, (rows, C)), axis=0))
    return walk * scale


def _series(kind: str, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "synthetic":
        return _synthetic(rows)
    values = _random_walk(rng, rows)
    if kind == "gaps":
        values[rng.random(values.shape) < 0.08] = np.nan
        values[:3, 2] = np.nan  # a leading gap
    elif kind == "filled":
        values[rng.random(values.shape) < 0.08] = np.nan
        values = fill_missing(values)
    elif kind == "ties":
        values = np.round(values / values.max(axis=0) * 3) * values.max(axis=0)
    elif kind == "idle":
        values[rows // 3 : rows // 2] = 0.0
    elif kind == "silent":  # a target that is 0 all along (a site without uplink traffic)
        values[:, TARGET_INDEX[2]] = 0.0
    elif kind == "extreme":
        values[rng.random(values.shape) < 0.02] = 1e300
        values[rng.random(values.shape) < 0.02] = -1e300
        values[rng.random(values.shape) < 0.01] = np.inf
    return _times(rows), values


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    assert not bad.any(), f"{bad.sum()} cells differ, first at {np.argwhere(bad)[:3].tolist()}"


KINDS = ["synthetic", "walk", "gaps", "filled", "ties", "idle", "silent", "extreme"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window", [1, 2, 3, 8, 10, 33])
def test_kernel_equals_numpy_on_every_window(kind: str, window: int) -> None:
    rng = np.random.default_rng([window, len(kind)])
    times, values = _series(kind, rng, 600)
    ends = window_ends(len(values), window, 0)
    with np.errstate(all="ignore"):  # inf - inf and 1e300 ** 2 in "extreme"
        spec = _spec(np.nan_to_num(values, posinf=0.0, neginf=0.0), window)
        expected = window_features(spec, times, values, ends)
        got = NativeFeatures(spec)(times, values, ends)
    assert_same(got, expected)


def test_a_column_that_is_always_zero_gives_finite_features() -> None:
    """Its training mean is 0, so last / max(mean, floor) needs a floor above 0:
    0/0 made its ratio feature NaN in every window."""
    rng = np.random.default_rng(7)
    times, values = _series("silent", rng, 300)
    spec = _spec(values, 10)
    ends = window_ends(len(values), 10, 0)
    for features in (
        window_features(spec, times, values, ends),
        NativeFeatures(spec)(times, values, ends),
    ):
        assert np.isfinite(features).all()


def test_kernel_equals_numpy_on_long_windows_and_stacked_series() -> None:
    rng = np.random.default_rng(3)
    times, values = _series("walk", rng, 2400)
    spec = _spec(values, 200)
    ends = np.arange(1, 13) * 200  # the server's layout: histories end to end
    assert_same(
        NativeFeatures(spec)(times, values, ends), window_features(spec, times, values, ends)
    )


def test_layout_comes_from_the_table() -> None:
    rng = np.random.default_rng(0)
    _, values = _series("walk", rng, 100)
    spec = _spec(values, 10)
    layout = kernel_layout(spec)
    kernel_blocks = [b for b in FEATURE_BLOCKS if b.kind >= 0]
    assert layout.blocks.shape == (len(kernel_blocks), 6)
    assert list(layout.blocks[:, 0]) == [b.kind for b in kernel_blocks]
    # Offsets ascend and the targets' blocks read the target columns.
    assert (np.diff(layout.blocks[:, 1]) > 0).all()
    last = layout.blocks[-1]
    assert list(layout.columns[last[2] : last[2] + last[3]]) == list(TARGET_INDEX)


def test_a_new_block_needs_only_a_table_row() -> None:
    """Another EWM level: one more Block; the kernel follows without any change."""
    rng = np.random.default_rng(1)
    times, values = _series("walk", rng, 300)
    spec = _spec(values, 10)
    extra = dataclasses.replace(FEATURE_BLOCKS[-1], name="ewm05", kind=EWM, alpha=0.05)
    blocks = (*FEATURE_BLOCKS, extra)
    ends = window_ends(len(values), 10, 0)
    assert_same(
        NativeFeatures(spec, blocks)(times, values, ends),
        window_features(spec, times, values, ends, blocks),
    )


def _arguments() -> dict:
    rng = np.random.default_rng(2)
    times, values = _series("walk", rng, 40)
    spec = _spec(values, 10)
    layout = kernel_layout(spec)
    ends = np.array([10, 25, 40], np.int64)
    return {
        "values": values,
        "ends": ends,
        "times": times.view(np.int64),
        "caps": layout.caps,
        "blocks": layout.blocks,
        "columns": layout.columns,
        "params": layout.params,
        "window": layout.window,
        "step_ns": layout.step_ns,
        "out": np.empty((3, layout.width), np.float32),
        "phases": np.empty((3, 3), np.float64),
    }


def _call(args: dict) -> None:
    _core.lte_features(*args.values())


def _blocks_with(args: dict, row: int, field: int, value: int) -> np.ndarray:
    blocks = args["blocks"].copy()
    blocks[row, field] = value
    return blocks


def test_valid_arguments_run() -> None:
    _call(_arguments())


@pytest.mark.parametrize(
    "change",
    [
        ("values", lambda a: a["values"].astype(np.float32)),
        ("values", lambda a: a["values"].T),  # not C-contiguous
        ("values", lambda a: a["values"].ravel()),
        ("values", lambda a: a["values"][:, :5].copy()),  # caps no longer match
        ("values", lambda a: [[1.0]]),
        ("ends", lambda a: a["ends"].astype(np.int32)),
        ("ends", lambda a: np.array([9], np.int64)),
        ("ends", lambda a: np.array([41], np.int64)),
        ("ends", lambda a: np.array([-1], np.int64)),
        ("times", lambda a: a["times"][:-1]),
        ("times", lambda a: a["times"].astype(np.float64)),
        ("caps", lambda a: a["caps"][:3]),
        ("blocks", lambda a: a["blocks"][:, :5].copy()),
        ("blocks", lambda a: _blocks_with(a, 0, 0, 99)),  # unknown kind
        ("blocks", lambda a: _blocks_with(a, 0, 0, -3)),
        ("blocks", lambda a: _blocks_with(a, 3, 1, 10**6)),  # offset past the row
        ("blocks", lambda a: _blocks_with(a, 3, 1, -1)),
        ("blocks", lambda a: _blocks_with(a, 3, 2, 10**6)),  # columns past the table
        ("blocks", lambda a: _blocks_with(a, 3, 3, -1)),
        ("blocks", lambda a: _blocks_with(a, 3, 3, 2**62)),
        ("blocks", lambda a: _blocks_with(a, 9, 4, 10**6)),  # EWM weights past params
        ("blocks", lambda a: _blocks_with(a, 6, 4, -1)),  # DIFF rows back < 0
        ("columns", lambda a: np.full_like(a["columns"], C)),
        ("columns", lambda a: np.full_like(a["columns"], -1)),
        ("params", lambda a: a["params"][:2]),
        ("window", lambda a: 0),
        ("window", lambda a: -(2**40)),
        ("window", lambda a: 41),
        ("out", lambda a: a["out"][:, :-1].copy()),
        ("out", lambda a: a["out"][:2]),
        ("out", lambda a: a["out"].astype(np.float64)),
        ("out", lambda a: np.ones(a["out"].shape, np.float32)[:, ::2]),
        ("phases", lambda a: a["phases"][:, :2].copy()),
    ],
)
def test_malformed_arguments_raise(change) -> None:
    assert_refused(_core.lte_features, _arguments(), *change)


def test_read_only_output_and_wrong_arity_raise() -> None:
    assert_output_and_arity_checked(_core.lte_features, _arguments())


def test_empty_calls_are_fine() -> None:
    args = _arguments()
    args["ends"] = np.empty(0, np.int64)
    args["out"] = np.empty((0, args["out"].shape[1]), np.float32)
    args["phases"] = np.empty((0, 3))
    _call(args)


def test_predict_trees_refuses_what_is_not_a_library(tmp_path) -> None:
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(TypeError):
        _core.predict_trees(("not a capsule",), x, np.empty((2, 1), np.float32))
    with pytest.raises(TypeError):
        _core.predict_trees([], x, np.empty((2, 0), np.float32))  # a tuple is required
    _core.predict_trees((), x, np.empty((2, 0), np.float32))
    with pytest.raises(ValueError):
        _core.predict_trees((), x, np.empty((3, 0), np.float32))
    with pytest.raises(OSError):
        _core.load_trees(str(tmp_path / "missing.so"))
    not_trees = tmp_path / "empty.so"
    not_trees.write_bytes(b"\x7fELF")
    with pytest.raises(OSError):
        _core.load_trees(str(not_trees))


@pytest.fixture(scope="module")
def boosters(tmp_path_factory):
    """Three small compiled XGBoost models: (tl2cgen.Predictor, library path)."""
    tl2cgen = pytest.importorskip("tl2cgen")
    import xgboost as xgb

    from slocast.adapters import compiled_trees as ct

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
def test_compiled_trees_equal_tl2cgen(boosters, rows) -> None:
    """Every library from one native loop gives TL2cgen's own outputs, missing values
    included, and nothing accumulates across calls."""
    import tl2cgen

    from slocast.serve.kernels import CompiledTrees

    trees = CompiledTrees([library for _, library in boosters])
    x = np.random.default_rng(rows).random((rows, 8), dtype=np.float32) * 1.2 - 0.1
    x[::3, rows % 8] = np.nan
    got = trees.predict(x)
    assert got.shape == (rows, len(boosters)) and got.dtype == np.float32
    if rows:
        dmat = tl2cgen.DMatrix(x)
        for i, (predictor, _) in enumerate(boosters):
            np.testing.assert_array_equal(got[:, i], predictor.predict(dmat).reshape(-1))
    np.testing.assert_array_equal(trees.predict(x), got)
    with pytest.raises(ValueError):  # fewer columns than the trees read
        trees.predict(np.zeros((2, 7), np.float32))
