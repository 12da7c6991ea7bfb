"""The one feature builder shared by training, evaluation and serving.

Every model sees a series as ``times`` (datetime64[ns], shape (n,)) and
``values`` (float64, shape (n, C), columns in :data:`FEATURE_COLUMNS` order) and
is asked for forecasts at window *ends*: for an end ``e`` the inputs are rows
``e - window .. e - 1`` and the forecast covers the ``horizon`` rows from ``e``
on. ``e`` may equal ``n`` (the future: the serving case). Offline evaluation and
the HTTP server call the same functions below, so they cannot drift.

Everything here is vectorised (fancy indexing on strided views); there is no
per-row Python loop.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

from slocast.core.schema import FEATURE_COLUMNS, TARGET_COLUMNS, TARGET_INDEX

# Volume columns are heavy-tailed (max ~17x mean): log-compress them as inputs.
LOG_COLUMNS: tuple[str, ...] = ("down", "up")
N_CALENDAR = 6
_DAY_S = 86400.0
_WEEK_S = 7 * _DAY_S
_YEAR_S = 365.25 * _DAY_S
# 1970-01-01 was a Thursday; shift so that day-of-week 0 is Monday.
_MONDAY_OFFSET_S = 3 * _DAY_S


def fill_missing(values: np.ndarray) -> np.ndarray:
    """The NaN rule: carry the last observation forward; leading gaps take the first one.

    Only the past is used for any row except a leading gap, which has no past.
    """
    v = np.array(values, dtype=np.float64, copy=True)
    n = v.shape[0]
    if n == 0 or not np.isnan(v).any():
        return v
    idx = np.where(~np.isnan(v), np.arange(n)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = np.take_along_axis(v, idx, axis=0)
    # Leading NaNs (no earlier observation): back-fill from the first observation.
    first = np.argmax(~np.isnan(v), axis=0)
    lead = np.arange(n)[:, None] < first[None, :]
    filled = np.where(lead, v[first, np.arange(v.shape[1])][None, :], filled)
    return filled


def calendar_features(times: np.ndarray) -> np.ndarray:
    """Minute-of-day, day-of-week and day-of-year as sin/cos pairs, shape (..., 6)."""
    seconds = np.asarray(times).astype("datetime64[ns]").astype(np.int64) / 1e9
    phases = (
        2 * np.pi * (seconds % _DAY_S) / _DAY_S,
        2 * np.pi * ((seconds - _MONDAY_OFFSET_S) % _WEEK_S) / _WEEK_S,
        2 * np.pi * (seconds % _YEAR_S) / _YEAR_S,
    )
    parts = []
    for phase in phases:
        parts.extend((np.sin(phase), np.cos(phase)))
    return np.stack(parts, axis=-1)


def window_ends(n_rows: int, window: int, horizon: int) -> np.ndarray:
    """All ends whose inputs and whole horizon lie inside ``n_rows`` rows."""
    return np.arange(window, n_rows - horizon + 1, dtype=np.int64)


def gather_windows(values: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """Input windows, shape (N, window, C): rows ``end - window .. end - 1``."""
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size and (ends.min() < window or ends.max() > values.shape[0]):
        raise IndexError("window ends out of range for the given series")
    return values[ends[:, None] - window + np.arange(window)[None, :]]


# Floor of the per-window level, relative to the target's training mean: an idle
# window (level ~0) is normalised by this instead of dividing by zero.
LEVEL_FLOOR = 1e-3


def window_level(spec: FeatureSpec, target_rows: np.ndarray) -> np.ndarray:
    """Per-window level of each target, (N, K), from the windows' target columns
    (N, window, K): the window mean (negatives as 0) plus a small floor."""
    targets = np.maximum(np.asarray(target_rows, np.float64), 0.0)
    return targets.mean(axis=-2) + _level_floor(spec.target_center)


@functools.lru_cache(maxsize=64)
def _level_floor(target_center: tuple[float, ...]) -> np.ndarray:
    # Cached: the serving path asks for it on every request.
    floor = LEVEL_FLOOR * np.maximum(np.abs(np.asarray(target_center, np.float64)), 1e-9)
    floor.flags.writeable = False
    return floor


def gather_targets(values: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """Truth for the target columns, shape (N, horizon, K)."""
    rows = np.asarray(ends, dtype=np.int64)[:, None] + np.arange(horizon)[None, :]
    return values[rows][..., list(TARGET_INDEX)]


def target_times(
    times: np.ndarray, ends: np.ndarray, horizon: int, step_seconds: float
) -> np.ndarray:
    """Timestamps of the forecast rows, shape (N, horizon), continuing the grid."""
    last = np.asarray(times).astype("datetime64[ns]")[np.asarray(ends, dtype=np.int64) - 1]
    step = np.timedelta64(int(round(step_seconds * 1e9)), "ns")
    return last[:, None] + step * np.arange(1, horizon + 1)[None, :]


@dataclass(frozen=True)
class FeatureSpec:
    """Fitted, serialisable description of a model's inputs and outputs.

    Fitted on training rows only. ``caps`` clip inputs at a high training
    quantile; ``center``/``scale`` standardise inputs after the log transform of
    :data:`LOG_COLUMNS`; ``target_center``/``target_scale`` standardise targets
    linearly (so squared error in scaled units is squared error in real units).
    Zero-variance columns get scale 1, so they map to 0 instead of NaN.
    ``target_floor`` is the lowest forecast of each target any family serves: 0,
    or the training minimum where the training rows go below 0 (volumes, counts
    and resource-block shares cannot be negative, but a file may say otherwise).
    None (specs saved before it existed) leaves forecasts unclipped.
    """

    window: int
    horizon: int
    step_seconds: float
    caps: tuple[float, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    target_center: tuple[float, ...]
    target_scale: tuple[float, ...]
    columns: tuple[str, ...] = FEATURE_COLUMNS
    targets: tuple[str, ...] = TARGET_COLUMNS
    target_floor: tuple[float, ...] | None = None

    @classmethod
    def fit(
        cls,
        train_values: np.ndarray,
        *,
        window: int,
        horizon: int,
        step_seconds: float,
        cap_quantile: float,
    ) -> FeatureSpec:
        v = np.asarray(train_values, np.float64)
        caps = np.nanquantile(v, cap_quantile, axis=0)
        transformed = _log_columns(np.minimum(v, caps))
        t = v[:, list(TARGET_INDEX)]
        return cls(
            window=window,
            horizon=horizon,
            step_seconds=float(step_seconds),
            caps=tuple(float(x) for x in caps),
            center=tuple(float(x) for x in np.nanmean(transformed, axis=0)),
            scale=tuple(_safe_scale(np.nanstd(transformed, axis=0))),
            target_center=tuple(float(x) for x in np.nanmean(t, axis=0)),
            target_scale=tuple(_safe_scale(np.nanstd(t, axis=0))),
            target_floor=tuple(float(x) for x in np.minimum(np.nanmin(t, axis=0), 0.0)),
        )

    def floor_forecast(self, out: np.ndarray) -> np.ndarray:
        """Forecasts (..., K) raised to ``target_floor`` in place (see the class docstring)."""
        if self.target_floor is not None:
            np.maximum(out, np.asarray(self.target_floor), out=out)
        return out

    def scale_inputs(self, values: np.ndarray) -> np.ndarray:
        """Clip, log-compress and standardise raw values (any leading shape, last axis C)."""
        clipped = np.minimum(np.asarray(values, np.float64), np.asarray(self.caps))
        return (_log_columns(clipped) - np.asarray(self.center)) / np.asarray(self.scale)

    def scale_targets(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, np.float64) - np.asarray(self.target_center)) / np.asarray(
            self.target_scale
        )

    def unscale_targets(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64) * np.asarray(self.target_scale) + np.asarray(
            self.target_center
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _safe_scale(std: np.ndarray) -> list[float]:
    return [float(s) if np.isfinite(s) and s > 1e-12 else 1.0 for s in std]


def _log_columns(values: np.ndarray) -> np.ndarray:
    out = np.array(values, dtype=np.float64, copy=True)
    for name in LOG_COLUMNS:
        j = FEATURE_COLUMNS.index(name)
        out[..., j] = np.log1p(np.maximum(out[..., j], 0.0))
    return out


def residual_scale(
    spec: FeatureSpec, values: np.ndarray, ends: np.ndarray, arrays: SpecArrays | None = None
) -> np.ndarray:
    """Per-window scale of forecast errors, shape (N, 1, K): the recent load level.

    Errors of traffic forecasts grow with the traffic itself, so conformal
    residuals are divided by this scale and bounds multiplied by it. It is the
    window mean of each target (inputs clipped to the training caps) plus a floor
    of 5% of the target's training mean (+ its spread), so an idle window still
    gets a bound of sensible width. ``arrays``: :func:`spec_arrays` of ``spec``, when
    the caller keeps them.
    """
    arrays = arrays or spec_arrays(spec)
    # Only the target columns are needed: clip them at their caps (same elementwise
    # minimum as clipping every column, then selecting).
    targets = _window_rows(values, np.asarray(ends, dtype=np.int64), spec.window)
    windows = np.minimum(targets[..., arrays.target_index], arrays.target_caps)
    level = np.abs(windows).mean(axis=1)
    return (level + arrays.residual_floor)[:, None, :]


def predicted_change(
    spec: FeatureSpec,
    point: np.ndarray,
    values: np.ndarray,
    ends: np.ndarray,
    scale: np.ndarray,
    arrays: SpecArrays | None = None,
) -> np.ndarray:
    """How far each forecast moves from the last observed target, in units of ``scale``.

    Shape of ``point`` (N, horizon, K). Conformal calibration groups forecasts by
    it: after a burst a forecaster predicts a fall back towards the usual level,
    and whether the burst in fact lasts decides its errors, so the residual
    distribution differs between forecasts of a fall, of no change and of a rise.
    """
    arrays = arrays or spec_arrays(spec)
    last = values[np.asarray(ends, dtype=np.int64) - 1][:, arrays.target_index]
    last = np.minimum(last, arrays.target_caps)[:, None, :]
    return (np.asarray(point, np.float64) - last) / scale


# -- window features: one table, a NumPy reference, and the native kernel mirroring it --
#
# Each block of the feature matrix is one row of FEATURE_BLOCKS: its name, the kernel
# code of its computation (lte.c's `enum kind` lists the same codes in the same
# order), the columns it reads, and its parameters. Offsets are derived from the
# table here and handed to the kernel (see kernel_layout), so neither side spells
# them out. Adding a feature of an existing kind is one row; a new kind is one row,
# one NumPy function in _REFERENCE and one case in lte.c.
LAG, MEAN, STD, MIN, MAX, DELTA, DIFF, EWM, LAST_OVER_MEAN, LAST_MINUS_MEDIAN, MEDIAN, MEDIAN3 = (
    range(12)
)
CALENDAR = -1  # sin/cos of the first forecast row's phases: NumPy's own sin/cos
COLUMNS, TARGETS = "columns", "targets"
# Trees split one feature at a time, so they cannot form a difference or a ratio of
# two lags themselves; the target dynamics spell out the short-term dynamics (kept
# because they lowered validation NRMSE on PobleSec, 1.060 -> 1.049).
CALENDAR_NAMES = ("mod_sin", "mod_cos", "dow_sin", "dow_cos", "doy_sin", "doy_cos")


@dataclass(frozen=True)
class Block:
    """One block of window features: ``kind`` over the ``on`` columns of every window.

    ``back`` (DIFF): rows back from the last row of the two operands (clamped to the
    window). ``alpha`` (EWM): weight of the newest row.
    """

    name: str
    kind: int
    on: str
    back: tuple[int, int] = (0, 0)
    alpha: float = 0.0


FEATURE_BLOCKS: tuple[Block, ...] = (
    Block("lag", LAG, COLUMNS),
    Block("mean", MEAN, COLUMNS),
    Block("std", STD, COLUMNS),
    Block("min", MIN, COLUMNS),
    Block("max", MAX, COLUMNS),
    Block("delta", DELTA, COLUMNS),
    Block("calendar", CALENDAR, COLUMNS),
    Block("d1", DIFF, TARGETS, back=(0, 1)),
    Block("d2", DIFF, TARGETS, back=(1, 2)),
    Block("d13", DIFF, TARGETS, back=(0, 2)),
    Block("ewm50", EWM, TARGETS, alpha=0.5),
    Block("ewm20", EWM, TARGETS, alpha=0.2),
    Block("last_over_mean", LAST_OVER_MEAN, TARGETS),
    Block("last_minus_median", LAST_MINUS_MEDIAN, TARGETS),
    Block("median", MEDIAN, TARGETS),
    Block("median3", MEDIAN3, TARGETS),
)


def _block_columns(spec: FeatureSpec, block: Block) -> np.ndarray:
    if block.on == TARGETS:
        return np.asarray([spec.columns.index(t) for t in spec.targets], np.int64)
    return np.arange(len(spec.columns), dtype=np.int64)


def _block_width(spec: FeatureSpec, block: Block) -> int:
    if block.kind == CALENDAR:
        return N_CALENDAR
    count = len(spec.targets) if block.on == TARGETS else len(spec.columns)
    return spec.window * count if block.kind == LAG else count


def _block_params(spec: FeatureSpec, block: Block) -> np.ndarray:
    """The float parameters the kernel reads for a block (empty for most kinds)."""
    if block.kind == EWM:
        weights = (1 - block.alpha) ** np.arange(spec.window)[::-1]
        return weights / weights.sum()
    if block.kind == LAST_OVER_MEAN:
        # A floor at 1e-3 of the training mean keeps the ratio finite in idle windows;
        # the absolute one, where a column was 0 all through training: 0/0 would be NaN.
        return np.maximum(1e-3 * np.abs(np.asarray(spec.target_center, np.float64)), 1e-12)
    return np.empty(0)


def feature_width(spec: FeatureSpec, blocks: tuple[Block, ...] = FEATURE_BLOCKS) -> int:
    """Number of columns :func:`window_features` returns."""
    return sum(_block_width(spec, b) for b in blocks)


def feature_names(spec: FeatureSpec, blocks: tuple[Block, ...] = FEATURE_BLOCKS) -> list[str]:
    names: list[str] = []
    for block in blocks:
        columns = [spec.columns[j] for j in _block_columns(spec, block)]
        if block.kind == LAG:
            names += [f"{c}_lag{spec.window - i}" for i in range(spec.window) for c in columns]
        elif block.kind == CALENDAR:
            names += CALENDAR_NAMES
        else:
            names += [f"{c}_{block.name}" for c in columns]
    return names


def window_features(
    spec: FeatureSpec,
    times: np.ndarray,
    values: np.ndarray,
    ends: np.ndarray,
    blocks: tuple[Block, ...] = FEATURE_BLOCKS,
) -> np.ndarray:
    """Flat features of every window, shape (N, F), float32: the reference definition.

    Inputs are clipped at the training caps (raw units otherwise); the calendar
    features are those of each window's first forecast row. Every value depends on
    its own window only, never on the rest of the batch. The native kernel
    (:class:`slocast.serve.features.NativeFeatures`) computes the same values and is
    tested equal to this on every window (tests/native/test_lte_features.py).
    """
    ends = np.asarray(ends, dtype=np.int64)
    windows = clipped_windows(spec, values, ends)
    out = np.empty((ends.size, feature_width(spec, blocks)), dtype=np.float32)
    col = 0
    for block in blocks:
        width = _block_width(spec, block)
        if block.kind == CALENDAR:
            phases = calendar_phases(times, ends, round(spec.step_seconds * 1e9))
            out[:, col : col + width : 2] = np.sin(phases)
            out[:, col + 1 : col + width : 2] = np.cos(phases)
        else:
            # C order, so reductions along the window run row by row (as the kernel's).
            w = np.ascontiguousarray(windows[:, :, _block_columns(spec, block)])
            out[:, col : col + width] = _REFERENCE[block.kind](w, block, spec).reshape(
                ends.size, width
            )
        col += width
    return out


_PERIODS = np.array([_DAY_S, _WEEK_S, _YEAR_S])
_OFFSETS = np.array([0.0, _MONDAY_OFFSET_S, 0.0])


def calendar_phases(times: np.ndarray, ends: np.ndarray, step_ns: int) -> np.ndarray:
    """Day, week (starting on Monday) and year phases of each window's first forecast
    row, shape (N, 3): :func:`calendar_features` before its sin/cos."""
    ns = np.asarray(times).astype("datetime64[ns]", copy=False).view(np.int64)[ends - 1]
    # The first forecast row's time, as target_times(times, ends, 1, step) computes it.
    seconds = (ns + step_ns) / 1e9
    phase = np.subtract(seconds[:, None], _OFFSETS)
    np.remainder(phase, _PERIODS, out=phase)
    np.multiply(2 * np.pi, phase, out=phase)
    np.true_divide(phase, _PERIODS, out=phase)
    return phase


def _mean(w: np.ndarray) -> np.ndarray:
    # Reduced along the window axis row by row (not pairwise): what the kernel does.
    total = np.add.reduce(w, axis=1)
    return np.true_divide(total, w.shape[1], out=total)


def _std(w: np.ndarray, block: Block, spec: FeatureSpec) -> np.ndarray:
    dev = w - _mean(w)[:, None]
    np.multiply(dev, dev, out=dev)
    var = np.add.reduce(dev, axis=1)
    return np.sqrt(np.true_divide(var, w.shape[1], out=var))


def _back(w: np.ndarray, rows: int) -> np.ndarray:
    """The row ``rows`` before the last (the oldest when the window is shorter)."""
    return w[:, -1 - min(rows, w.shape[1] - 1)]


def _median(w: np.ndarray) -> np.ndarray:
    ordered = np.sort(w, axis=1)
    half = w.shape[1] // 2
    odd = w.shape[1] % 2
    median = ordered[:, half] if odd else (ordered[:, half - 1] + ordered[:, half]) / 2
    # np.median is NaN when any value is; NaN sorts last.
    return np.where(np.isnan(ordered[:, -1]), np.nan, median)


def _median3(w: np.ndarray) -> np.ndarray:
    """Median of the last three rows (of all rows when the window is shorter)."""
    if w.shape[1] < 3:
        return np.median(w, axis=1)
    a, b, c = w[:, -3], w[:, -2], w[:, -1]
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


_REFERENCE = {
    LAG: lambda w, block, spec: w,
    MEAN: lambda w, block, spec: _mean(w),
    STD: _std,
    MIN: lambda w, block, spec: np.minimum.reduce(w, axis=1),
    MAX: lambda w, block, spec: np.maximum.reduce(w, axis=1),
    DELTA: lambda w, block, spec: w[:, -1] - w[:, 0],
    DIFF: lambda w, block, spec: _back(w, block.back[0]) - _back(w, block.back[1]),
    EWM: lambda w, block, spec: np.add.reduce(w * _block_params(spec, block)[:, None], axis=1),
    LAST_OVER_MEAN: lambda w, block, spec: (
        w[:, -1] / np.maximum(_mean(w), _block_params(spec, block))
    ),
    LAST_MINUS_MEDIAN: lambda w, block, spec: w[:, -1] - _median(w),
    MEDIAN: lambda w, block, spec: _median(w),
    MEDIAN3: lambda w, block, spec: _median3(w),
}


@dataclass(frozen=True)
class KernelLayout:
    """The feature table as the kernel's arrays (see lte.c ``lte_features``).

    ``blocks`` rows: kind, offset in the feature row, first index into ``columns``,
    column count, two integer arguments (DIFF: rows back; EWM/LAST_OVER_MEAN: start
    of the block's parameters in ``params``).
    """

    blocks: np.ndarray  # int64 (B, 6)
    columns: np.ndarray  # int64
    params: np.ndarray  # float64
    caps: np.ndarray  # float64 (C,)
    calendar: int  # offset of the calendar block, -1 when absent
    width: int
    window: int
    step_ns: int


def kernel_layout(spec: FeatureSpec, blocks: tuple[Block, ...] = FEATURE_BLOCKS) -> KernelLayout:
    rows, columns, params = [], [], []
    offset, n_columns, n_params, calendar = 0, 0, 0, -1
    for block in blocks:
        width = _block_width(spec, block)
        if block.kind == CALENDAR:
            calendar = offset
        else:
            cols, par = _block_columns(spec, block), _block_params(spec, block)
            args = block.back if block.kind == DIFF else (n_params, 0)
            rows.append((block.kind, offset, n_columns, cols.size, *args))
            columns.append(cols)
            params.append(par)
            n_columns += cols.size
            n_params += par.size
        offset += width
    return KernelLayout(
        blocks=np.asarray(rows, np.int64).reshape(-1, 6),
        columns=np.concatenate(columns or [np.empty(0, np.int64)]).astype(np.int64),
        params=np.concatenate(params or [np.empty(0)]).astype(np.float64),
        caps=np.asarray(spec.caps, np.float64),
        calendar=calendar,
        width=offset,
        window=spec.window,
        step_ns=round(spec.step_seconds * 1e9),
    )


def clipped_windows(spec: FeatureSpec, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Input windows clipped at the training caps, shape (N, window, C), float64."""
    ends = np.asarray(ends, dtype=np.int64)
    return np.minimum(_window_rows(values, ends, spec.window), np.asarray(spec.caps))


def _window_rows(values: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """:func:`gather_windows` for callers that only read the result: one window is a
    view (a slice), not a fancy-indexed copy. Same rows, same checks."""
    if ends.size == 1:
        end = int(ends[0])
        if end < window or end > values.shape[0]:
            raise IndexError("window ends out of range for the given series")
        return values[end - window : end][None]
    return gather_windows(values, ends, window)


@dataclass(frozen=True)
class SpecArrays:
    """NumPy arrays derived from a :class:`FeatureSpec` (built once by callers that
    compute per request, e.g. the server)."""

    caps: np.ndarray
    target_index: np.ndarray
    target_caps: np.ndarray
    residual_floor: np.ndarray


def spec_arrays(spec: FeatureSpec) -> SpecArrays:
    caps = np.asarray(spec.caps, dtype=np.float64)
    target_index = np.asarray(TARGET_INDEX, dtype=np.intp)
    return SpecArrays(
        caps=caps,
        target_index=target_index,
        target_caps=caps[target_index],
        residual_floor=0.05
        * (np.abs(np.asarray(spec.target_center, np.float64)) + np.asarray(spec.target_scale)),
    )
