"""XGBoost serving kernels in C: the input features, and all boosters in one call.

:meth:`XGBoostForecaster.features` is the definition (NumPy, used by training and
evaluation). A forecast of one window spends ~200 us in ~60 small NumPy calls
around ~2,000 floating-point operations; this kernel does the same operations in
the same order in C (IEEE double, sequential sums, no FMA contraction, the same
float32 rounding), in about a microsecond per window. Only the sin/cos of the
calendar phases stay in NumPy, so they are NumPy's own functions.
``tests/models/test_native_features.py`` checks the kernel equals the NumPy path
on every window of many series, and the kernel refuses a window with a non-finite
column (NaN rules stay NumPy's: the caller falls back for the whole call).

:class:`TreeRows` evaluates every compiled booster of a model on the feature
matrix in one call (TL2cgen's own path costs a DMatrix and a call per booster:
~30 us of a single forecast).

The library is built like the compiled trees: at promotion, beside the bundle
(:mod:`slocast.models.compiled_bundle`), or by the server when none was shipped,
cached under the source's SHA-256 with its toolchain; no compiler and nothing
shipped means the NumPy path, logged.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from slocast.core.c_json import JSON_READER
from slocast.core.compiled_trees import (
    CompiledLibrary,
    compile_c_library,
    library_paths,
    toolchain_info,
    verified_library,
    write_json_atomic,
)
from slocast.core.digests import sha256_bytes, sha256_file
from slocast.core.features import N_CALENDAR, FeatureSpec, spec_arrays, tabular_width
from slocast.models.native_forecast_c import REQUEST_SOURCE
from slocast.models.xgboost_forecaster import _dynamics_constants

log = logging.getLogger(__name__)

PREFIX = "features"
# Strict IEEE: no contraction into FMA, no fast-math reassociation.
COMPILER = ["gcc", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* np.minimum(v, cap): v when v <= cap or v is NaN, else cap (NaN caps propagate). */
static double clip(double v, double cap) { return (v <= cap || v != v) ? v : cap; }

/* np.remainder for doubles (CPython's float % is the same). */
static double remainder_(double a, double b) {
    double mod = fmod(a, b);
    if (mod) { if ((b < 0) != (mod < 0)) mod += b; } else { mod = copysign(0.0, b); }
    return mod;
}

static void sort_(double *x, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        double v = x[i]; int64_t j = i - 1;
        while (j >= 0 && x[j] > v) { x[j + 1] = x[j]; j--; }
        x[j + 1] = v;
    }
}

/* Features of n windows into out (n x width, float32) and the calendar phases of
   each window's first forecast row into phases (n x 3). Returns 0, or 1 + the
   index of the first window with a non-finite column (out is then incomplete). */
int64_t slocast_xgb_features(
    const double *values, int64_t n_rows, int64_t c, const int64_t *ends, int64_t n,
    int64_t w, const double *caps, const int64_t *times_ns, int64_t step_ns,
    const int64_t *tidx, int64_t k, const double *ewm, int64_t n_ewm, const double *floor_,
    float *out, int64_t width, double *phases)
{
    const double periods[3] = {86400.0, 604800.0, 31557600.0};
    const double offsets[3] = {0.0, 259200.0, 0.0};
    double *win = malloc(sizeof(double) * (size_t)(w * c + 3 * c + w));
    if (!win) return -1;
    double *mean = win + w * c, *lo = mean + c, *hi = lo + c, *scratch = hi + c;
    int64_t status = 0;
    for (int64_t s = 0; s < n && !status; s++) {
        int64_t end = ends[s];
        if (end < w || end > n_rows) { status = -2; break; }
        float *o = out + s * width;
        const double *rows = values + (end - w) * c;
        for (int64_t i = 0; i < w * c; i++) {
            win[i] = clip(rows[i], caps[i % c]);
            o[i] = (float)win[i];
        }
        int64_t col = w * c;
        for (int64_t j = 0; j < c; j++) {
            double total = win[j], a = win[j], b = win[j];
            for (int64_t i = 1; i < w; i++) {
                double v = win[i * c + j];
                total += v; if (v < a) a = v; if (v > b) b = v;
            }
            if (!isfinite(total)) { status = s + 1; break; }
            mean[j] = total / (double)w; lo[j] = a; hi[j] = b;
        }
        if (status) break;
        for (int64_t j = 0; j < c; j++) {
            double d = win[j] - mean[j], sq = d * d;
            for (int64_t i = 1; i < w; i++) { d = win[i * c + j] - mean[j]; sq += d * d; }
            o[col + j] = (float)mean[j];
            o[col + c + j] = (float)sqrt(sq / (double)w);
            o[col + 2 * c + j] = (float)lo[j];
            o[col + 3 * c + j] = (float)hi[j];
            o[col + 4 * c + j] = (float)(win[(w - 1) * c + j] - win[j]);
        }
        double seconds = (double)(times_ns[end - 1] + step_ns) / 1e9;
        for (int p = 0; p < 3; p++)
            phases[s * 3 + p] = (2.0 * M_PI) * remainder_(seconds - offsets[p], periods[p]) / periods[p];
        /* Target dynamics, blocks of k: d1, d2, d13, ewm..., last/mean, last-median,
           median, median of the last three. Calendar columns (6) are left to NumPy. */
        float *dyn = o + col + 5 * c + 6;
        int64_t i2 = w - (w < 2 ? w : 2), i3 = w - (w < 3 ? w : 3);
        for (int64_t t = 0; t < k; t++) {
            int64_t j = tidx[t];
            double last = win[(w - 1) * c + j], lag2 = win[i2 * c + j], lag3 = win[i3 * c + j];
            dyn[t] = (float)(last - lag2);
            dyn[k + t] = (float)(lag2 - lag3);
            dyn[2 * k + t] = (float)(last - lag3);
            for (int64_t e = 0; e < n_ewm; e++) {
                double level = win[j] * ewm[e * w];
                for (int64_t i = 1; i < w; i++) level += win[i * c + j] * ewm[e * w + i];
                dyn[(3 + e) * k + t] = (float)level;
            }
            int64_t b = 3 + n_ewm;
            double m = mean[j] >= floor_[t] ? mean[j] : floor_[t];
            dyn[b * k + t] = (float)(last / m);
            for (int64_t i = 0; i < w; i++) scratch[i] = win[i * c + j];
            sort_(scratch, w);
            double median = (w % 2) ? scratch[w / 2] : (scratch[w / 2 - 1] + scratch[w / 2]) / 2;
            dyn[(b + 1) * k + t] = (float)(last - median);
            dyn[(b + 2) * k + t] = (float)median;
            double m3;
            if (w >= 3) {
                double x = win[(w - 3) * c + j], y = win[(w - 2) * c + j];
                double low = x <= y ? x : y, high = x <= y ? y : x;
                high = high <= last ? high : last;
                m3 = low >= high ? low : high;
            } else {
                m3 = (w == 1) ? last : (win[j] + last) / 2;
            }
            dyn[(b + 3) * k + t] = (float)m3;
        }
    }
    free(win);
    return status;
}

/* TL2cgen's generated predict(): the row as Entry unions, accumulating output. */
union entry { int missing; float fvalue; int qvalue; };
typedef void (*tree_fn)(union entry *row, int pred_margin, float *result);

/* Raw outputs of n_fn generated libraries on rows x width float32 features, into
   out (n_fn x rows), as TL2cgen's PredictBatch computes them: NaN is "missing",
   each result starts at zero, pred_margin 0 (TL2cgen's default). */
int64_t slocast_tree_rows(const uint64_t *fns, int64_t n_fn, const float *x, int64_t rows,
                          int64_t width, float *out)
{
    union entry *row = malloc(sizeof(union entry) * (size_t)width);
    if (!row) return -1;
    for (int64_t r = 0; r < rows; r++) {
        const float *v = x + r * width;
        for (int64_t j = 0; j < width; j++) {
            if (isnan(v[j])) row[j].missing = -1; else row[j].fvalue = v[j];
        }
        for (int64_t f = 0; f < n_fn; f++) {
            out[f * rows + r] = 0.0f;
            ((tree_fn)(uintptr_t)fns[f])(row, 0, &out[f * rows + r]);
        }
    }
    free(row);
    return 0;
}
"""
# One library for the whole XGBoost request path: the request kernel reads JSON with
# the shared reader and calls the two kernels above directly.
SOURCE = JSON_READER + SOURCE + REQUEST_SOURCE
SOURCE_SHA256 = sha256_bytes(SOURCE.encode())


def build(lib_dir: Path) -> CompiledLibrary:
    """Compile :data:`SOURCE` into ``lib_dir`` (cached by its SHA-256); ``RuntimeError``
    when there is no working compiler."""
    paths = library_paths(SOURCE_SHA256, lib_dir, PREFIX)
    if verified_library(SOURCE_SHA256, lib_dir, PREFIX) is not None:
        return paths
    seconds = compile_c_library(SOURCE, paths.library, COMPILER, what="feature kernel")
    write_json_atomic(
        paths.manifest,
        {
            "model_sha256": SOURCE_SHA256,  # the key verified_library checks
            "library_sha256": sha256_file(paths.library),
            "library": paths.library.name,
            "compile_seconds": round(seconds, 3),
            "compiler": COMPILER,
            "toolchain": toolchain_info(),
        },
    )
    return paths


def _address(array: np.ndarray) -> int:
    """Data pointer of a C-contiguous array (~3x cheaper than ``array.ctypes.data``)."""
    if array.flags.writeable:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    return array.ctypes.data


class NativeFeatures:
    """:meth:`XGBoostForecaster.features` through the C kernel, for one spec."""

    def __init__(self, library: Path, spec: FeatureSpec, targets: tuple[int, ...]) -> None:
        self.library = ctypes.CDLL(str(library))
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        function = self.library.slocast_xgb_features
        function.restype = i64
        function.argtypes = [vp, i64, i64, vp, i64, i64, vp, vp, i64, vp, i64, vp, i64, vp]
        function.argtypes += [vp, i64, vp]
        self._function = function
        self._tree_rows = self.library.slocast_tree_rows
        self._tree_rows.restype = i64
        self._tree_rows.argtypes = [vp, i64, vp, i64, i64, vp]
        arrays = spec_arrays(spec)
        ewm, floor = _dynamics_constants(spec)
        self._window = spec.window
        self._step_ns = arrays.step_ns
        # Kept as attributes: the C side reads them through raw pointers.
        self._caps = np.ascontiguousarray(arrays.caps, np.float64)
        self._targets = np.asarray(targets, np.int64)
        self._ewm = np.ascontiguousarray(ewm[:, :, 0], np.float64)
        self._floor = np.ascontiguousarray(floor, np.float64)
        self.caps_ptr, self.targets_ptr = self._caps.ctypes.data, self._targets.ctypes.data
        self.ewm_ptr, self.floor_ptr = self._ewm.ctypes.data, self._floor.ctypes.data
        self.n_ewm = self._ewm.shape[0]
        self.calendar_column = tabular_width(spec) - N_CALENDAR
        self.width = tabular_width(spec) + (3 + len(ewm) + 4) * len(targets)

    def features(
        self, times: np.ndarray, values: np.ndarray, ends: np.ndarray
    ) -> np.ndarray | None:
        """The feature matrix (N, F) float32, or None when a window is not finite."""
        values = np.ascontiguousarray(values, np.float64)
        ends = np.ascontiguousarray(ends, np.int64)
        ns = np.ascontiguousarray(
            np.asarray(times).astype("datetime64[ns]", copy=False).view(np.int64)
        )
        n = ends.size
        out = np.empty((n, self.width), np.float32)
        phases = np.empty((n, 3), np.float64)
        if n == 0:
            return out
        status = self._function(
            _address(values),
            values.shape[0],
            values.shape[1],
            _address(ends),
            n,
            self._window,
            self.caps_ptr,
            _address(ns),
            self._step_ns,
            self.targets_ptr,
            self._targets.size,
            self.ewm_ptr,
            self.n_ewm,
            self.floor_ptr,
            _address(out),
            self.width,
            _address(phases),
        )
        if status == -2:
            raise IndexError("window ends out of range for the given series")
        if status != 0:
            return None
        calendar = out[:, self.calendar_column : self.calendar_column + N_CALENDAR]
        calendar[:, 0::2] = np.sin(phases)
        calendar[:, 1::2] = np.cos(phases)
        return out


class TreeRows:
    """Every compiled booster on a float32 feature matrix in one C call.

    Calls the ``predict()`` each TL2cgen-generated library exports (what TL2cgen's
    own PredictBatch calls per row), for all libraries and rows in a loop in C:
    no DMatrix, no per-library Python. Only for float32 thresholds and leaves (the
    Entry union and the result type of XGBoost models).
    """

    def __init__(self, kernel: NativeFeatures, libraries: list[Path], num_features: int) -> None:
        self._kernel = kernel
        self._libraries = [ctypes.CDLL(str(path)) for path in libraries]  # keep them loaded
        self._functions = np.array(
            [ctypes.cast(lib.predict, ctypes.c_void_p).value for lib in self._libraries],
            np.uint64,
        )
        self.functions_ptr = self._functions.ctypes.data
        self.count = int(self._functions.size)
        self.num_features = num_features

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs, shape ``(libraries, rows)``, float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (rows, {self.num_features}) features, got {x.shape}")
        out = np.empty((self._functions.size, x.shape[0]), np.float32)
        if x.shape[0]:
            self._kernel._tree_rows(
                self.functions_ptr,
                self._functions.size,
                _address(x),
                x.shape[0],
                x.shape[1],
                _address(out),
            )
        return out


def load(lib_dir: Path, spec: FeatureSpec, targets: tuple[int, ...]) -> NativeFeatures | None:
    """The kernel from the cache (shipped, adopted, verified) or built here; None when
    neither works (the NumPy path serves, same values, slower)."""
    library = verified_library(SOURCE_SHA256, lib_dir, PREFIX)
    if library is None:
        try:
            library = build(lib_dir).library
        except RuntimeError as exc:
            log.warning("feature kernel unavailable, NumPy features serve: %s", exc)
            return None
    try:
        return NativeFeatures(library, spec, targets)
    except OSError as exc:
        log.warning("cannot load %s (%s); NumPy features serve", library, exc)
        return None
