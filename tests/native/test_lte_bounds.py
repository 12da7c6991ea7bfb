"""The bounds kernel of ``slocast._native._core`` (``lte_bounds`` in ``_native/lte.c``).

Bit-equal to its NumPy reference :meth:`slocast.serve.bounds.Bounds.upper` (itself
tested equal to ``ModelBundle.upper``) for every calibration kind (plain,
normalised, grouped, both), one to many windows, windows shorter than NumPy's
8-way unrolled sum, longer than its 128-row pairwise block, zeros, values above
the caps and NaN; the first window with an absurd scale is named. Every malformed
argument raises ValueError/TypeError (the sanitizer build runs this file too).
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_calls import assert_output_and_arity_checked, assert_refused

from slocast._native import _core
from slocast.core.conformal import Calibration
from slocast.core.features import FeatureSpec, predicted_change, residual_scale
from slocast.core.schema import FEATURE_COLUMNS, TARGET_INDEX
from slocast.models.baselines import Persistence
from slocast.models.bundle import ModelBundle
from slocast.serve.bounds import Bounds
from slocast.serve.kernels import NativeBounds, ScaleError

C, K, H = len(FEATURE_COLUMNS), len(TARGET_INDEX), 3
LEVELS = (0.5, 0.8, 0.9, 0.99)
KINDS = [(False, 1), (True, 1), (True, 4), (False, 3)]  # (normalised, bins)


def _values(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.lognormal(0, 1.5, (rows, C)) * 10.0 ** rng.integers(-2, 8, C)


def _bundle(rng: np.random.Generator, window: int, normalised: bool, bins: int) -> ModelBundle:
    values = _values(rng, 2000)
    spec = FeatureSpec.fit(values, window=window, horizon=H, step_seconds=120.0, cap_quantile=0.9)
    ends = rng.integers(window, len(values), 600)
    point = rng.normal(1, 0.3, (600, H, K)) * values[ends - 1][:, None, list(TARGET_INDEX)]
    truth = point * rng.lognormal(0, 0.3, point.shape)
    scale = residual_scale(spec, values, ends)
    change = predicted_change(spec, point, values, ends, scale) if bins > 1 else None
    calibration = Calibration.fit(
        truth,
        point,
        LEVELS,
        scale=scale if normalised else None,
        group_by=change,
        bins=bins,
        min_group_size=20,
    )
    return ModelBundle(forecaster=Persistence(spec), calibration=calibration)


def _case(seed: list[int], window: int, windows: int, kind: tuple[bool, bool]):
    rng = np.random.default_rng(seed)
    bounds = Bounds(_bundle(rng, window, *kind))
    values = _values(rng, window * windows + 3)
    values[rng.random(values.shape) < 0.05] = 0.0
    values[rng.random(values.shape) < 0.05] *= 1e3  # above the caps
    ends = np.sort(rng.choice(np.arange(window, len(values) + 1), windows, replace=False))
    point = rng.normal(1, 0.5, (windows, H, K)) * values[ends - 1][:, None, list(TARGET_INDEX)]
    return bounds, point, values, ends.astype(np.int64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window", [1, 3, 8, 10, 17, 130, 300])
@pytest.mark.parametrize("windows", [1, 2, 37])
def test_kernel_equals_numpy_reference(kind, window: int, windows: int) -> None:
    bounds, point, values, ends = _case([window, windows, *kind], window, windows, kind)
    native = NativeBounds(bounds)
    for which in ([2], [3, 0, 2], [0, 1, 2, 3], []):
        got = native.upper(point, values, ends, np.array(which, np.int64))
        np.testing.assert_array_equal(got, bounds.upper(point, values, ends, which))


@pytest.mark.parametrize("kind", [(False, 1), (False, 3)])
def test_nan_without_normalisation_is_nan_where_numpy_gives_nan(kind) -> None:
    bounds, point, values, ends = _case([5], 10, 4, kind)
    values[ends[1] - 3, TARGET_INDEX[2]] = np.nan
    point[2, 1, 0] = np.nan
    which = [1, 3]
    got = NativeBounds(bounds).upper(point, values, ends, np.array(which, np.int64))
    want = bounds.upper(point, values, ends, which)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)  # NaN == NaN here


@pytest.mark.parametrize("absurd", [-1e308, np.nan, -np.inf])  # +inf is capped
def test_absurd_scale_names_the_first_bad_window(absurd: float) -> None:
    bounds, point, values, _ = _case([6], 10, 5, (True, 4))
    ends = np.arange(1, 6, dtype=np.int64) * 10  # windows that do not overlap
    values[ends[3] - 3 : ends[3] - 1, TARGET_INDEX[1]] = absurd  # two: the sum overflows
    values[ends[4] - 1, TARGET_INDEX[0]] = absurd
    with pytest.raises(ValueError):
        bounds.upper(point, values, ends, [0])
    with pytest.raises(ScaleError) as error:
        NativeBounds(bounds).upper(point, values, ends, np.array([0], np.int64))
    assert error.value.window == 3


def _arguments() -> dict:
    bounds, point, values, ends = _case([7], 10, 3, (True, 4))
    a = bounds.kernel_arguments()
    return {
        "point": point,
        "values": values,
        "ends": ends,
        "targets": a["targets"],
        "caps": a["caps"],
        "floor": a["floor"],
        "edges": a["edges"],
        "table": a["table"],
        "which": np.array([3, 1], np.int64),
        "window": a["window"],
        "normalised": a["normalised"],
        "out": np.empty((2, 3, H, K)),
    }


def _call(args: dict) -> int:
    return _core.lte_bounds(*args.values())


def test_valid_arguments_run() -> None:
    assert _call(_arguments()) == -1


@pytest.mark.parametrize(
    "change",
    [
        ("point", lambda a: a["point"].astype(np.float32)),
        ("point", lambda a: a["point"][:2].copy()),  # N differs from ends
        ("point", lambda a: np.ascontiguousarray(a["point"][:, :, :4])),
        ("point", lambda a: a["point"].transpose(1, 0, 2)),  # not C-contiguous
        ("values", lambda a: a["values"].ravel()),
        ("values", lambda a: [[1.0]]),
        ("ends", lambda a: np.array([9, 10, 20], np.int64)),  # before a whole window
        ("ends", lambda a: np.array([10, 20, 10**6], np.int64)),
        ("ends", lambda a: a["ends"].astype(np.int32)),
        ("targets", lambda a: np.full(K, C, np.int64)),
        ("targets", lambda a: np.full(K, -1, np.int64)),
        ("targets", lambda a: a["targets"][:3].copy()),
        ("caps", lambda a: a["caps"][:3].copy()),
        ("floor", lambda a: np.ones(K + 1)),
        ("edges", lambda a: np.ascontiguousarray(a["edges"][..., :1])),  # table has 4 bins
        ("edges", lambda a: np.zeros((H + 1, K, 3))),
        ("table", lambda a: np.ascontiguousarray(a["table"][..., :2])),
        ("table", lambda a: a["table"][:, :, :2].copy()),
        ("which", lambda a: np.array([4, 0], np.int64)),
        ("which", lambda a: np.array([-1, 0], np.int64)),
        ("which", lambda a: np.array([1], np.int64)),  # out has two levels
        ("window", lambda a: 0),
        ("window", lambda a: -(2**40)),
        ("window", lambda a: 2**62),
        ("out", lambda a: np.empty((2, 3, H, K), np.float32)),
        ("out", lambda a: np.empty((2, 3, H + 1, K))),
        ("out", lambda a: np.empty((2, 3, H, 2 * K))[..., ::2]),
    ],
)
def test_malformed_arguments_raise(change) -> None:
    assert_refused(_core.lte_bounds, _arguments(), *change)


def test_read_only_output_and_wrong_arity_raise() -> None:
    assert_output_and_arity_checked(_core.lte_bounds, _arguments())


def test_empty_calls_are_fine() -> None:
    args = _arguments()
    args["point"] = np.empty((0, H, K))
    args["ends"] = np.empty(0, np.int64)
    args["out"] = np.empty((2, 0, H, K))
    assert _call(args) == -1
    args = _arguments()
    args["which"] = np.empty(0, np.int64)
    args["out"] = np.empty((0, 3, H, K))
    assert _call(args) == -1
