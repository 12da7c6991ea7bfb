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
        )

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


def residual_scale(spec: FeatureSpec, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per-window scale of forecast errors, shape (N, 1, K): the recent load level.

    Errors of traffic forecasts grow with the traffic itself, so conformal
    residuals are divided by this scale and bounds multiplied by it. It is the
    window mean of each target (inputs clipped to the training caps) plus a floor
    of 5% of the target's training mean (+ its spread), so an idle window still
    gets a bound of sensible width.
    """
    arrays = spec_arrays(spec)
    # Only the target columns are needed: clip them at their caps (same elementwise
    # minimum as clipping every column, then selecting).
    targets = _window_rows(values, np.asarray(ends, dtype=np.int64), spec.window)
    windows = np.minimum(targets[..., arrays.target_index], arrays.target_caps)
    level = np.abs(windows).mean(axis=1)
    return (level + arrays.residual_floor)[:, None, :]


def tabular_features(
    spec: FeatureSpec, times: np.ndarray, values: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Flat features for tree models, shape (N, F), float32.

    Per window: every lag of every column (clipped, raw units), the window mean,
    standard deviation, min and max per column, the last-minus-first change, and the
    calendar features of the first forecast row.
    """
    ends = np.asarray(ends, dtype=np.int64)
    windows = clipped_windows(spec, values, ends)
    out = np.empty((ends.size, tabular_width(spec)), dtype=np.float32)
    fill_tabular_features(spec, times, windows, ends, out)
    return out


def tabular_width(spec: FeatureSpec) -> int:
    """Number of columns :func:`tabular_features` returns."""
    return (spec.window + 5) * len(spec.columns) + N_CALENDAR


def clipped_windows(spec: FeatureSpec, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Input windows clipped at the training caps, shape (N, window, C), float64."""
    ends = np.asarray(ends, dtype=np.int64)
    return np.minimum(_window_rows(values, ends, spec.window), spec_arrays(spec).caps)


def _window_rows(values: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """:func:`gather_windows` for callers that only read the result: one window is a
    view (a slice), not a fancy-indexed copy. Same rows, same checks."""
    if ends.size == 1:
        end = int(ends[0])
        if end < window or end > values.shape[0]:
            raise IndexError("window ends out of range for the given series")
        return values[end - window : end][None]
    return gather_windows(values, ends, window)


def fill_tabular_features(
    spec: FeatureSpec,
    times: np.ndarray,
    windows: np.ndarray,
    ends: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write :func:`tabular_features` of ``windows`` (from :func:`clipped_windows`)
    into the first :func:`tabular_width` columns of ``out`` (N, >= F), float32.

    Same arithmetic as the straightforward version (``windows.mean(axis=1)``,
    ``windows.std(axis=1)``, ... concatenated, then cast to float32), so the
    values are bit-identical; only the per-call overhead is gone: one output
    array filled in place instead of many small pieces concatenated.
    """
    n, w, c = windows.shape
    out[:, : w * c] = windows.reshape(n, w * c)
    col = w * c
    # windows.mean(axis=1) and windows.std(axis=1), spelled out as NumPy does them.
    total = np.add.reduce(windows, axis=1, keepdims=True)
    mean = np.true_divide(total, w, out=total)
    out[:, col : col + c] = mean[:, 0]
    dev = windows - mean
    np.multiply(dev, dev, out=dev)
    var = np.add.reduce(dev, axis=1)
    np.true_divide(var, w, out=var)
    out[:, col + c : col + 2 * c] = np.sqrt(var, out=var)
    out[:, col + 2 * c : col + 3 * c] = np.minimum.reduce(windows, axis=1)
    out[:, col + 3 * c : col + 4 * c] = np.maximum.reduce(windows, axis=1)
    out[:, col + 4 * c : col + 5 * c] = windows[:, -1, :] - windows[:, 0, :]
    _fill_calendar(spec, times, ends, out[:, col + 5 * c : col + 5 * c + N_CALENDAR])


_PERIODS = np.array([_DAY_S, _WEEK_S, _YEAR_S])
_OFFSETS = np.array([0.0, _MONDAY_OFFSET_S, 0.0])


def _fill_calendar(spec: FeatureSpec, times: np.ndarray, ends: np.ndarray, out: np.ndarray) -> None:
    """:func:`calendar_features` of the first forecast row of every window, into ``out``."""
    arrays = spec_arrays(spec)
    ns = np.asarray(times).astype("datetime64[ns]", copy=False).view(np.int64)[ends - 1]
    # The first forecast row's time, as target_times(times, ends, 1, step) computes it.
    seconds = (ns + arrays.step_ns) / 1e9
    # Day, week (shifted to start on Monday; s - 0.0 == s exactly) and year phases.
    phase = np.subtract(seconds[:, None], _OFFSETS)
    np.remainder(phase, _PERIODS, out=phase)
    np.multiply(2 * np.pi, phase, out=phase)
    np.true_divide(phase, _PERIODS, out=phase)
    out[:, 0::2] = np.sin(phase)
    out[:, 1::2] = np.cos(phase)


@dataclass(frozen=True)
class SpecArrays:
    """NumPy arrays derived once from a :class:`FeatureSpec` (cached on the spec)."""

    caps: np.ndarray
    target_center: np.ndarray
    step_ns: int
    target_index: np.ndarray
    target_caps: np.ndarray
    residual_floor: np.ndarray


def spec_arrays(spec: FeatureSpec) -> SpecArrays:
    """The spec's tuples as arrays, converted once per spec object, not per call."""
    cached = spec.__dict__.get("_arrays")
    if cached is None:
        caps = np.asarray(spec.caps, dtype=np.float64)
        target_center = np.asarray(spec.target_center, dtype=np.float64)
        target_index = np.asarray(TARGET_INDEX, dtype=np.intp)
        cached = SpecArrays(
            caps=caps,
            target_center=target_center,
            step_ns=int(round(spec.step_seconds * 1e9)),
            target_index=target_index,
            target_caps=caps[target_index],
            residual_floor=0.05 * (np.abs(target_center) + np.asarray(spec.target_scale)),
        )
        # Derived from immutable fields only; not a dataclass field, so equality,
        # hashing and to_dict() ignore it.
        object.__setattr__(spec, "_arrays", cached)
    return cached


def tabular_feature_names(spec: FeatureSpec) -> list[str]:
    names = [f"{c}_lag{spec.window - i}" for i in range(spec.window) for c in spec.columns]
    for stat in ("mean", "std", "min", "max", "delta"):
        names.extend(f"{c}_{stat}" for c in spec.columns)
    names.extend(["mod_sin", "mod_cos", "dow_sin", "dow_cos", "doy_sin", "doy_cos"])
    return names
