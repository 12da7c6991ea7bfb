"""Whole forecast requests in one native pass, for XGBoost champions.

Why (measured on the 2-core dev machine, PobleSec champion, one series): the
Python request path costs ~450 us (orjson decode and validation ~75, features and
trees ~75, conformal bounds through NumPy ~160 per level, response dicts ~100),
against ~120 us of CPU for the whole HTTP exchange of ``GET /healthz``. The kernel
(:mod:`slocast.models.native_forecast_c`, compiled into the XGBoost serving
library) parses the body straight into rows, calls the same feature kernel and
compiled trees, applies
:meth:`XGBoostForecaster.finish` and :meth:`ModelBundle.upper` (one C call), then
writes the response around the numbers orjson formatted (a second call): ~26 us.

Correctness contract: the kernel only *accepts*. Anything outside a strict subset
(JSON escapes, unusual timestamp forms, a value it cannot be sure to compute
exactly like NumPy, an error of any kind) makes it return ``None``; the handler
then runs the Python path, which decides and names the error. What it accepts, it
answers byte for byte as the Python path does: tested differentially
(``tests/serve/test_native_forecast.py``) and checked once per loaded model on a
probe request before the kernel is used (a mismatch disables it, logged).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

import numpy as np
import orjson

from slocast.core.compiled_trees import ENGINE_TL2CGEN
from slocast.core.features import spec_arrays
from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN
from slocast.models.bundle import ModelBundle
from slocast.models.xgboost_native import NativeFeatures, TreeRows
from slocast.serve.tree_engine import PROBE_WINDOWS
from slocast.serve.validation import RequestRules

log = logging.getLogger(__name__)

ENGINE = ENGINE_TL2CGEN  # the compiled trees compute the forecasts
MAX_LEVELS = 16  # LTE_MAX_LEVELS in the C source
_vp, _i64 = ctypes.c_void_p, ctypes.c_int64


class _ModelStruct(ctypes.Structure):
    """``lte_model`` of the C source, field for field."""

    _fields_ = [
        (name, _i64)
        for name in (
            "ncols",
            "keep",
            "window",
            "max_rows",
            "max_series",
            "max_horizon",
            "horizon",
            "k",
            "step_ns",
            "tolerance_ns",
            "default_q",
        )
    ] + [
        ("names", _vp),
        ("name_off", _vp),
        ("caps", _vp),
        ("tidx", _vp),
        ("ewm", _vp),
        ("n_ewm", _i64),
        ("floor_", _vp),
        ("width", _i64),
        ("fns", _vp),
        ("target_mean", _vp),
        ("share", ctypes.c_double),
        ("normalised", _i64),
        ("bins", _i64),
        ("nlevels", _i64),
        ("target_caps", _vp),
        ("residual_floor", _vp),
        ("levels", _vp),
        ("offsets", _vp),
        ("edges", _vp),
        ("group_offsets", _vp),
        ("target_keys", _vp),
        ("target_key_off", _vp),
        ("level_keys", _vp),
        ("level_key_off", _vp),
        ("calendar", _i64),
        ("block", _vp),
        ("block_len", _i64),
    ]


class _CallStruct(ctypes.Structure):
    """``lte_call`` of the C source, field for field."""

    _fields_ = [
        ("cap", _i64),
        ("values", _vp),
        ("times", _vp),
        ("ids", _vp),
        ("x", _vp),
        ("phases", _vp),
        ("numbers", _vp),
        ("out", _vp),
        ("out_cap", _i64),
        ("n", _i64),
        ("horizon", _i64),
        ("nq", _i64),
        ("count", _i64),
        ("id_bytes", _i64),
        ("q", _i64 * MAX_LEVELS),
    ]


def _joined(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated bytes and the int64 offsets of each part (n + 1)."""
    text = np.frombuffer(b"".join(parts) or b"\0", np.uint8).copy()
    offsets = np.cumsum([0, *map(len, parts)]).astype(np.int64)
    return text, offsets


class NativeForecast:
    """The request kernel bound to one served model (immutable once built)."""

    def __init__(
        self,
        features: NativeFeatures,
        trees: TreeRows,
        bundle: ModelBundle,
        rules: RequestRules,
        model_block: bytes,
        engine_for: Callable[[int], str],
    ) -> None:
        spec, forecaster, calibration = bundle.spec, bundle.forecaster, bundle.calibration
        horizon, k = int(spec.horizon), len(spec.targets)
        if trees.count != horizon * k:
            raise ValueError(f"{trees.count} boosters for {horizon} steps x {k} targets")
        if not spec.window <= rules.history_rows:
            raise ValueError("history shorter than the feature window")
        if spec.window > 128:  # NumPy's pairwise sums recurse beyond: not mirrored
            raise ValueError(f"window {spec.window} > 128")
        if len(rules.levels) > MAX_LEVELS:
            raise ValueError(
                f"{len(rules.levels)} calibrated levels; the kernel takes {MAX_LEVELS}"
            )
        arrays = spec_arrays(spec)
        lib = features.library
        self._answer = lib.slocast_lte_answer
        self._answer.argtypes = [_vp, _vp, ctypes.c_char_p, _i64, ctypes.c_int32]
        self._answer.restype = _i64
        _check_trig(lib)
        self._render = lib.slocast_lte_render
        self._render.argtypes = [_vp, _vp, ctypes.c_char_p, ctypes.c_int32, ctypes.c_char_p, _i64]
        self._render.restype = _i64

        levels = sorted(rules.levels)
        offsets = np.stack([np.broadcast_to(calibration.offsets[q], (horizon, k)) for q in levels])
        bins = 1
        edges = np.zeros(1)
        group = np.zeros(1)
        if calibration.grouped:
            bins = int(calibration.edges.shape[0]) + 1
            edges = np.broadcast_to(calibration.edges, (bins - 1, horizon, k))
            group = np.stack(
                [np.broadcast_to(calibration.group_offsets[q], (bins, horizon, k)) for q in levels]
            )
        names, name_off = _joined([n.encode() for n in (TIME_COLUMN, *FEATURE_COLUMNS)])
        tkeys, tkey_off = _joined([orjson.dumps(t) + b":" for t in spec.targets])
        lkeys, lkey_off = _joined([orjson.dumps(rules.levels[q]) + b":" for q in levels])
        # Every array the C side reads through a raw pointer stays referenced here.
        self._keep = [
            np.ascontiguousarray(a)
            for a in (
                names,
                name_off,
                np.asarray(forecaster.target_mean, np.float64),
                arrays.target_caps.astype(np.float64),
                np.asarray(arrays.residual_floor, np.float64),
                np.asarray(levels, np.float64),
                np.asarray(offsets, np.float64),
                np.asarray(edges, np.float64),
                np.asarray(group, np.float64),
                tkeys,
                tkey_off,
                lkeys,
                lkey_off,
            )
        ]
        ptr = [a.ctypes.data for a in self._keep]
        default_q = levels.index(rules.default_quantiles[0]) if rules.default_quantiles else -1
        self._struct = _ModelStruct(
            ncols=len(FEATURE_COLUMNS),
            keep=rules.history_rows,
            window=spec.window,
            max_rows=rules.max_history_rows,
            max_series=rules.max_batch_series,
            max_horizon=rules.max_horizon,
            horizon=horizon,
            k=k,
            step_ns=rules.step_ns,
            tolerance_ns=rules.tolerance_ns,
            default_q=default_q,
            names=ptr[0],
            name_off=ptr[1],
            caps=features.caps_ptr,
            tidx=features.targets_ptr,
            ewm=features.ewm_ptr,
            n_ewm=features.n_ewm,
            floor_=features.floor_ptr,
            width=features.width,
            fns=trees.functions_ptr,
            target_mean=ptr[2],
            share=float(forecaster.persistence_share),
            normalised=int(calibration.normalised),
            bins=bins,
            nlevels=len(levels),
            target_caps=ptr[3],
            residual_floor=ptr[4],
            levels=ptr[5],
            offsets=ptr[6],
            edges=ptr[7],
            group_offsets=ptr[8],
            target_keys=ptr[9],
            target_key_off=ptr[10],
            level_keys=ptr[11],
            level_key_off=ptr[12],
            calendar=features.calendar_column,
            block=ctypes.cast(ctypes.c_char_p(model_block), _vp).value,
            block_len=len(model_block),
        )
        self._features = features  # keeps the library (and its constants) loaded
        self._trees = trees
        self._model = ctypes.addressof(self._struct)
        self._rows = rules.history_rows
        self._ncols = len(FEATURE_COLUMNS)
        self._k = k
        self._width = features.width
        self._max_series = rules.max_batch_series
        self._horizon = horizon
        self._nlevels = len(levels)
        self._engine_for = engine_for
        # Compiled trees at every probed batch size (the usual case): no check per call.
        self._mixed_engines = any(engine_for(size) != ENGINE for size in PROBE_WINDOWS)
        self._block = model_block  # the C side points into it
        self._block_len = len(model_block)
        # Fewest bytes of one valid row ({"time":"YYYY-MM-DDTHH:MM:SS","c":0,...}) and
        # one series: bounds the series a body can hold, so buffers are sized once.
        row = 2 + len(TIME_COLUMN) + 2 + 1 + 21 + sum(len(c) + 4 for c in FEATURE_COLUMNS)
        self._min_series_bytes = 20 + rules.history_rows * (row + 1)
        keys = int(tkey_off[-1]) + k
        self._step_bytes = 64 + keys
        self._level_bytes = 8 + int(lkey_off[-1]) + keys
        # A single forecast's largest response (numbers take at most 24 bytes each).
        cells = horizon * (1 + len(levels)) * k
        self._out_bytes = 128 + len(model_block) + cells * 25
        self._out_bytes += horizon * (self._step_bytes + len(levels) * self._level_bytes)
        self._single = self._scratch(1)
        self._single_lock = threading.Lock()

    def forecast(self, body: bytes, batch: bool) -> tuple[bytes, int] | None:
        """``(response body, windows)``, or None when the Python path must answer."""
        if batch:
            cap = min(self._max_series, len(body) // self._min_series_bytes + 1)
            return self._run(self._scratch(cap), body, 1)
        # One request at a time per worker (the event loop), so the single-series
        # buffers are reused; a concurrent caller (another thread) gets its own.
        if not self._single_lock.acquire(blocking=False):
            return self._run(self._scratch(1), body, 0)
        try:
            return self._run(self._single, body, 0)
        finally:
            self._single_lock.release()

    def _scratch(self, cap: int) -> _Scratch:
        cells = self._horizon * (1 + self._nlevels) * self._k
        return _Scratch(cap, self._rows, self._ncols, self._width, cap * cells, self._out_bytes)

    def _run(self, scratch: _Scratch, body: bytes, batch: int) -> tuple[bytes, int] | None:
        call = scratch.address
        n = self._answer(self._model, call, body, len(body), batch)
        if n < 1 or (self._mixed_engines and self._engine_for(n) != ENGINE):
            return None  # refused, or a batch size where XGBoost measured faster
        fields = scratch.call
        text = orjson.dumps(scratch.numbers[: fields.count], option=orjson.OPT_SERIALIZE_NUMPY)
        size = len(text) + 64 + self._block_len
        size += n * fields.horizon * (self._step_bytes + fields.nq * self._level_bytes)
        if batch:
            size += n * 32 + fields.id_bytes
        out = scratch.output(size)
        written = self._render(self._model, call, body, batch, text, len(text))
        if written < 0:
            return None
        return out[:written].tobytes(), n


class _Scratch:
    """Buffers of one call for up to ``cap`` series, and the ``lte_call`` that points
    at them (built once: taking ``ndarray.ctypes.data`` costs ~2 us a buffer)."""

    def __init__(
        self, cap: int, rows: int, ncols: int, width: int, numbers: int, out_bytes: int
    ) -> None:
        self.values = np.empty((cap * rows, ncols), np.float64)
        self.times = np.empty(cap * rows, np.int64)
        self.ids = np.empty(2 * cap, np.int64)
        self.x = np.empty((cap, width), np.float32)
        self.phases = np.empty((cap, 3), np.float64)
        self.numbers = np.empty(numbers, np.float64)
        self._out = np.empty(out_bytes, np.uint8)
        self.call = _CallStruct(
            cap=cap,
            values=self.values.ctypes.data,
            times=self.times.ctypes.data,
            ids=self.ids.ctypes.data,
            x=self.x.ctypes.data,
            phases=self.phases.ctypes.data,
            numbers=self.numbers.ctypes.data,
            out=self._out.ctypes.data,
            out_cap=out_bytes,
        )
        self.address = ctypes.addressof(self.call)

    def output(self, size: int) -> np.ndarray:
        if size > self._out.size:
            self._out = np.empty(size, np.uint8)
            self.call.out, self.call.out_cap = self._out.ctypes.data, size
        return self._out


_TRIG_CHECKED: set[int] = set()  # libraries checked in this process (libm and NumPy fixed)


def _check_trig(lib: ctypes.CDLL) -> None:
    """The kernel's float32 calendar features equal NumPy's (ValueError if not).

    The kernel takes sin/cos from libm and refuses values too close to a float32
    rounding boundary to be sure (see ``f32_of_trig``); checked here on every phase
    of a year of 2-minute steps (day, week and year cycles) and random phases,
    once per library and process (~0.2 s).
    """
    function = lib.slocast_trig_f32
    key = ctypes.cast(function, _vp).value  # the loaded library's own code
    if key in _TRIG_CHECKED:
        return
    grid = np.arange(0, 366 * 86400, 120, dtype=np.float64)
    phases = np.concatenate(
        [
            2 * np.pi * np.remainder(grid - offset, period) / period
            for period, offset in ((86400.0, 0.0), (604800.0, 259200.0), (31557600.0, 0.0))
        ]
        + [np.random.default_rng(0).uniform(0, 2 * np.pi, 100_000)]
    )
    out = np.empty((phases.size, 2), np.float32)
    function.argtypes = [_vp, _i64, _vp]
    function.restype = None
    function(phases.ctypes.data, phases.size, out.ctypes.data)
    expected = np.stack([np.sin(phases), np.cos(phases)], axis=1).astype(np.float32)
    sure = ~np.isnan(out)
    if not np.array_equal(out[sure], expected[sure]):
        raise ValueError("libm sin/cos round to other float32 values than NumPy's here")
    if sure.mean() < 0.999:
        raise ValueError(f"calendar features refused for {1 - sure.mean():.2%} of phases")
    _TRIG_CHECKED.add(key)


def build_native_forecast(
    bundle: ModelBundle,
    predictor: object,
    rules: RequestRules,
    model_block: bytes,
    reference: Callable[[bytes, bool], bytes],
) -> tuple[NativeForecast | None, str]:
    """The kernel for this model when it can serve it and answers a probe request
    exactly like ``reference`` (the Python path); else None. Also says why."""
    parts = getattr(predictor, "native_parts", None)
    found = parts() if parts is not None else None
    if found is None:
        return None, "python (no native features or compiled trees for this model)"
    features, trees = found
    try:
        native = NativeForecast(features, trees, bundle, rules, model_block, predictor.engine_for)
    except (ValueError, AttributeError, OSError) as exc:
        log.warning("native forecast kernel unavailable, Python path serves: %s", exc)
        return None, f"python ({exc})"
    for batch, body in _probe_bodies(rules, bundle.spec.step_seconds):
        expected = reference(body, batch)
        got = native.forecast(body, batch)
        if got is None or got[0] != expected:
            log.error(
                "native forecast kernel disagrees with the Python path on a probe request "
                "(batch=%s): Python path serves\nnative: %r\npython: %r",
                batch,
                None if got is None else got[0][:400],
                expected[:400],
            )
            return None, "python (native kernel disagreed on the probe request)"
    return native, "native"


def _probe_bodies(rules: RequestRules, step_seconds: float) -> list[tuple[bool, bytes]]:
    """A single and a batch request on a smooth synthetic history."""
    n = rules.history_rows + 2
    start = np.datetime64("2021-03-01T00:00:00", "s")
    step = np.timedelta64(int(step_seconds), "s")
    rng = np.random.default_rng(7)

    def history(seed_shift: float) -> list[dict]:
        level = 50.0 + seed_shift + np.cumsum(rng.normal(0, 3, (n, len(FEATURE_COLUMNS))), axis=0)
        return [
            {
                TIME_COLUMN: str(start + i * step),
                **{c: round(abs(float(v)), 3) for c, v in zip(FEATURE_COLUMNS, row, strict=True)},
            }
            for i, row in enumerate(level)
        ]

    levels = [float(q) for q in rules.levels]
    single = orjson.dumps({"history": history(0.0), "quantiles": levels})
    batch = orjson.dumps(
        {
            "series": [{"id": f"cell-{i}", "history": history(10.0 * i)} for i in range(3)],
            "horizon": rules.max_horizon,
            "quantiles": levels[::-1],
        }
    )
    return [(False, single), (True, batch)]
