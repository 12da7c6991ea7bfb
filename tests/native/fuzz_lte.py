"""Fuzz target of the LTE kernels (``_native/lte.c``): arbitrary shapes, dtypes, layouts
and values into ``lte_features``, ``predict_trees`` and ``lte_bounds``.

``one_input`` must only ever return or raise ValueError/TypeError; a crash, a
sanitizer report or any other exception is a bug. Driven by atheris (CI's fuzz job
runs it against the AddressSanitizer/UBSan build), e.g.::

    atheris.Setup(sys.argv, fuzz_lte.one_input); atheris.Fuzz()
"""

from __future__ import annotations

import contextlib

import atheris
import numpy as np

from slocast._native import _core

_BLOCK_FIELDS = 6
_I64 = (-(2**63), 2**63 - 1)


def _ints(fdp: atheris.FuzzedDataProvider, count: int, low: int, high: int) -> np.ndarray:
    return np.array([fdp.ConsumeIntInRange(low, high) for _ in range(count)], np.int64)


def _floats(fdp: atheris.FuzzedDataProvider, count: int) -> np.ndarray:
    # ConsumeFloat yields NaN, infinities, subnormals and extremes as well.
    return np.array([fdp.ConsumeFloat() for _ in range(count)], np.float64)


def _mangle(fdp: atheris.FuzzedDataProvider, array: np.ndarray) -> object:
    """Usually the array itself; sometimes a wrong dtype, layout, rank or not an array."""
    choice = fdp.ConsumeIntInRange(0, 15)
    if choice == 1:
        return array.astype(np.float32 if array.dtype != np.float32 else np.float64)
    if choice == 2 and array.ndim >= 1 and array.shape[0] > 1:
        return array[::2]  # not contiguous
    if choice == 3:
        return array.reshape(-1)
    if choice == 4:
        return array.astype(np.int32)
    if choice == 5:
        return array.tolist()
    if choice == 6:
        return None
    return array


def one_input(data: bytes) -> None:
    with np.errstate(all="ignore"):  # overflowing casts of extreme floats are the point
        _one_input(atheris.FuzzedDataProvider(data))


def _one_input(fdp: atheris.FuzzedDataProvider) -> None:
    n_rows = fdp.ConsumeIntInRange(0, 40)
    columns = fdp.ConsumeIntInRange(0, 12)
    window = fdp.ConsumeIntInRange(-2, 45) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(*_I64)
    n_ends = fdp.ConsumeIntInRange(0, 6)
    values = _floats(fdp, n_rows * columns).reshape(n_rows, columns)
    ends = _ints(fdp, n_ends, -3, 45)
    times = _ints(fdp, n_rows, *_I64) if fdp.ConsumeBool() else _ints(fdp, n_rows, 0, 2**62)
    caps = _floats(fdp, columns + fdp.ConsumeIntInRange(-1, 1) if columns else 0)
    n_blocks = fdp.ConsumeIntInRange(0, 8)
    blocks = _ints(fdp, n_blocks * _BLOCK_FIELDS, -2, 60).reshape(n_blocks, _BLOCK_FIELDS)
    if fdp.ConsumeBool() and n_blocks:
        blocks[fdp.ConsumeIntInRange(0, n_blocks - 1)] = _ints(fdp, _BLOCK_FIELDS, *_I64)
    index = _ints(fdp, fdp.ConsumeIntInRange(0, 20), -2, 14)
    params = _floats(fdp, fdp.ConsumeIntInRange(0, 60))
    width = fdp.ConsumeIntInRange(0, 300)
    rows_out = n_ends + fdp.ConsumeIntInRange(-1, 1) if fdp.ConsumeIntInRange(0, 9) == 0 else n_ends
    out = np.zeros((max(rows_out, 0), width), np.float32)
    phases = np.zeros((max(rows_out, 0), 3 if fdp.ConsumeIntInRange(0, 9) else 2), np.float64)
    step_ns = fdp.ConsumeIntInRange(*_I64)
    arguments = [values, ends, times, caps, blocks, index, params, window, step_ns, out, phases]
    arrays = [i for i, a in enumerate(arguments) if isinstance(a, np.ndarray)]
    for i in arrays[: fdp.ConsumeIntInRange(0, 2)]:
        arguments[i] = _mangle(fdp, arguments[i])
    with contextlib.suppress(ValueError, TypeError):
        _core.lte_features(*arguments)
    rows, width = fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 4)
    x = _floats(fdp, rows * width).astype(np.float32).reshape(rows, width)
    out_rows = max(x.shape[0] + fdp.ConsumeIntInRange(-1, 1) * fdp.ConsumeBool(), 0)
    out_trees = np.zeros((out_rows, 0))
    with contextlib.suppress(ValueError, TypeError):
        _core.predict_trees((), _mangle(fdp, x), _mangle(fdp, out_trees.astype(np.float32)))
    _fuzz_bounds(fdp)


def _fuzz_bounds(fdp: atheris.FuzzedDataProvider) -> None:
    """``lte_bounds``: shapes that agree or not, any ends, columns, levels and window."""
    n, h, k = (fdp.ConsumeIntInRange(0, 4) for _ in range(3))
    rows, columns = fdp.ConsumeIntInRange(0, 40), fdp.ConsumeIntInRange(0, 12)
    edges, levels, picked = (fdp.ConsumeIntInRange(0, 4) for _ in range(3))
    window = fdp.ConsumeIntInRange(-2, 45) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(*_I64)

    def near(size: int) -> int:  # usually the size that fits, sometimes one off
        return (
            max(size + fdp.ConsumeIntInRange(-1, 1), 0)
            if fdp.ConsumeIntInRange(0, 7) == 0
            else size
        )

    arguments = [
        _floats(fdp, n * h * k).reshape(n, h, k),
        _floats(fdp, rows * columns).reshape(rows, columns),
        _ints(fdp, near(n), -3, 45),
        _ints(fdp, near(k), -2, 14),
        _floats(fdp, near(k)),
        _floats(fdp, near(k)),
        _floats(fdp, h * k * edges).reshape(h, k, edges),
        _floats(fdp, levels * h * k * near(edges + 1)).reshape(levels, h, k, -1),
        _ints(fdp, picked, -1, 5),
        window,
        fdp.ConsumeBool(),
        np.zeros((near(picked), n, h, near(k))),
    ]
    arrays = [i for i, a in enumerate(arguments) if isinstance(a, np.ndarray)]
    for i in arrays[: fdp.ConsumeIntInRange(0, 2)]:
        arguments[i] = _mangle(fdp, arguments[i])
    with contextlib.suppress(ValueError, TypeError):
        _core.lte_bounds(*arguments)
