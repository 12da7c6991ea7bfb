"""Fuzz target of the forest kernel (``slocast._native._core.forest_predict``).

``one_input(data)`` turns arbitrary bytes into a forest table, a feature matrix and
an output array (shapes, dtypes, layouts and every value chosen by the fuzzer,
malformed ones included) and calls the kernel. The kernel may only return or raise
``ValueError``/``TypeError``; when it returns, its output must equal a NumPy walk of
the same padded trees (float32 sums in tree order), bit for bit. Anything else (a
crash, a sanitizer report, another exception, a wrong sum) is a finding.

Driven by atheris (``atheris.Setup(sys.argv, one_input); atheris.Fuzz()``, CI's
sanitizer job); tests/native/test_forest.py runs it on random bytes too.
"""

from __future__ import annotations

import warnings

import atheris
import numpy as np

from slocast._native import _core

MAX_ROWS = 40
MAX_TREES = 6


def reference(x, feat, thr, dleft, leaf, base) -> np.ndarray:
    """The padded forest walked with NumPy, row-wise vectorised."""
    depth = (feat.shape[1] + 1).bit_length() - 1
    ni = feat.shape[1]
    rows = np.arange(x.shape[0])
    acc = np.full(x.shape[0], base, dtype=np.float32)
    for t in range(feat.shape[0]):
        k = np.zeros(x.shape[0], dtype=np.int64)
        for _ in range(depth):
            v = x[rows, feat[t, k]]
            left = (v < thr[t, k]) | (np.isnan(v) & (dleft[t, k] != 0))
            k = 2 * k + 2 - left
        acc = (acc + leaf[t, k - ni]).astype(np.float32)
    return acc


def _floats(fdp: atheris.FuzzedDataProvider, n: int) -> np.ndarray:
    # any float32 value: NaN, infinities, subnormals, signed zeros
    raw = fdp.ConsumeBytes(4 * n).ljust(4 * n, b"\0")
    return np.frombuffer(raw, dtype=np.float32).copy()


def _array(fdp: atheris.FuzzedDataProvider, good: np.ndarray) -> object:
    """``good``, or now and then a malformed stand-in for it."""
    choice = fdp.ConsumeIntInRange(0, 40)
    if choice == 0:
        return good.astype(np.float64) if good.dtype != np.float64 else good.astype(np.int64)
    if choice == 1 and good.ndim == 2 and good.shape[1] > 1:
        return good[:, ::2]  # not C-contiguous
    if choice == 2:
        return good.reshape(-1)  # wrong number of dimensions
    if choice == 3:
        return good.tolist()  # not a buffer
    if choice == 4:
        return good.astype(good.dtype.newbyteorder(">"))
    if choice == 5:
        frozen = good.copy()
        frozen.setflags(write=False)
        return frozen
    return good


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    depth = fdp.ConsumeIntInRange(0, 11)  # 11: one level too deep
    nodes = (1 << depth) - 1
    if fdp.ConsumeIntInRange(0, 15) == 0:
        nodes = fdp.ConsumeIntInRange(0, 40)  # not 2**depth - 1 (usually)
    ntree = fdp.ConsumeIntInRange(0, MAX_TREES)
    nfeat = fdp.ConsumeIntInRange(0, 70)  # above 64: no AVX2 path
    rows = fdp.ConsumeIntInRange(0, MAX_ROWS)
    width = max(8, 1 << depth) if depth <= 10 else 8
    if fdp.ConsumeIntInRange(0, 15) == 0:
        width = fdp.ConsumeIntInRange(0, 20)
    if ntree * max(nodes, width) > 20_000:
        ntree = 1
    high = max(nfeat - 1, 0)
    bad_index = fdp.ConsumeIntInRange(0, 20) == 0
    feat = np.array(
        [fdp.ConsumeIntInRange(-2, high + 2) if bad_index else fdp.ConsumeIntInRange(0, high)
         for _ in range(ntree * nodes)],
        dtype=np.int32,
    ).reshape(ntree, nodes)  # fmt: skip
    thr = _floats(fdp, ntree * nodes).reshape(ntree, nodes)
    dleft = np.frombuffer(fdp.ConsumeBytes(ntree * nodes).ljust(ntree * nodes, b"\0"), np.uint8)
    dleft = dleft.reshape(ntree, nodes).copy()
    leaf = _floats(fdp, ntree * width).reshape(ntree, width)
    x = _floats(fdp, rows * nfeat).reshape(rows, nfeat)
    out_rows = rows if fdp.ConsumeIntInRange(0, 20) else fdp.ConsumeIntInRange(0, MAX_ROWS)
    out = np.empty(out_rows, dtype=np.float32)
    base = float(_floats(fdp, 1)[0])
    simd = fdp.ConsumeBool()
    with warnings.catch_warnings():  # casts of NaN/inf for the malformed variants
        warnings.simplefilter("ignore", RuntimeWarning)
        args = [_array(fdp, a) for a in (x, feat, thr, dleft, leaf)]
        out_arg = _array(fdp, out)
    try:
        _core.forest_predict(*args, base, out_arg, simd=simd)
    except (ValueError, TypeError):
        return
    # it ran: every array must have been well formed, and the sums right
    for arg, good in zip([*args, out_arg], (x, feat, thr, dleft, leaf, out), strict=True):
        assert isinstance(arg, np.ndarray) and arg.flags.c_contiguous, "accepted a bad layout"
        assert arg.dtype == good.dtype and arg.ndim == good.ndim, "accepted a bad array"
    assert out_arg.flags.writeable, "wrote into a read-only array"
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, float32 overflow
        want = reference(*args, np.float32(base))  # IndexError: it took inconsistent shapes
    np.testing.assert_array_equal(out_arg, want)
