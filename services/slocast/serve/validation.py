"""Request bodies -> validated numpy arrays, or a 4xx naming the offending field.

This is the HTTP-edge mirror of the dataset rules in :mod:`slocast.adapters.datasets`
(every feature column present and numeric, no infinite values, timestamps sorted,
unique and on the model's grid), plus the serving rules: at least the model's
history length of rows, no null cells (a client fills gaps; the server does not
guess), only calibrated quantiles, a horizon the model was trained for.

The shape and types of a body are msgspec Structs (:mod:`slocast.serve.bodies`),
decoded and checked in C; msgspec's error names the JSON path, which becomes the
``field`` of the 4xx. What a type cannot say (lengths, the time grid, calibrated
levels, unique ids) is checked here on the decoded values, with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter, sub
from typing import NamedTuple

import msgspec
import numpy as np

from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN
from slocast.serve.bodies import BATCH, FORECAST

_CELLS = attrgetter(*FEATURE_COLUMNS)  # a row's cells as a tuple, in column order
_TIME = attrgetter(TIME_COLUMN)
_PYTHON_GRID_UP_TO = 64
_ISO_EXAMPLE = "2018-02-05T23:40:00, 2018-02-05T23:40:00Z or 2018-02-05T23:40:00+01:00"
# numpy also reads bare digits as a year ("1517874000"), "today" and "now", and wraps a
# time beyond datetime64[ns] (1677-09-21 to 2262-04-11) silently: 9999 becomes 1815.
# So every stamp must open with a 4-digit year and "-"; years 1678-2261 are held
# whole, 1677 and 2262 only in part (checked exactly, per stamp).
_YEAR = itemgetter(slice(0, 5))
_EARLIEST_US = np.datetime64(np.datetime64(np.iinfo(np.int64).min + 1, "ns"), "us") + 1
_LATEST_US = np.datetime64(np.datetime64(np.iinfo(np.int64).max, "ns"), "us")
# orjson writes integers of the signed or unsigned 64-bit range only.
_ID_MIN, _ID_MAX = -(2**63), 2**64 - 1


class InputError(Exception):
    """A client error: HTTP ``status``, the JSON path of the ``field``, and what to fix."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RequestRules:
    """Everything validation needs from the served model, precomputed at load."""

    history_rows: int  # rows one forecast needs; older rows are ignored
    max_history_rows: int
    max_batch_series: int
    step_ns: int
    tolerance_ns: int
    max_horizon: int
    levels: dict[float, str]  # calibrated level -> its key in responses ("0.9")
    default_quantiles: tuple[float, ...]
    # The lowest value accepted per column (FEATURE_COLUMNS order): a target's floor
    # (0, or a negative training minimum; FeatureSpec.target_floor), -inf elsewhere.
    value_floor: np.ndarray

    def available(self) -> str:
        return ", ".join(self.levels.values()) or "none"


class ParsedRequest(NamedTuple):
    """Series stacked end to end, each trimmed to its last ``history_rows`` rows (a tuple:
    built on every request, cheaper than a frozen dataclass)."""

    times: np.ndarray  # datetime64[ns], (S * rows,)
    values: np.ndarray  # float64, (S * rows, C) in FEATURE_COLUMNS order
    ids: list | None  # series ids for a batch, None for a single forecast
    horizon: int
    quantiles: tuple[float, ...]


def parse_forecast(body: bytes, rules: RequestRules) -> ParsedRequest:
    doc = _decode(FORECAST, body)
    horizon = _horizon(doc.horizon, rules)
    quantiles = _quantiles(doc.quantiles, rules)
    times, values = _history(doc.history, "history", rules)
    # On the grid, so sorted: the last time is the latest.
    _check_forecast_times(int(times.view(np.int64)[-1]), horizon, rules, "history")
    return ParsedRequest(times, values, None, horizon, quantiles)


def parse_batch(body: bytes, rules: RequestRules) -> ParsedRequest:
    doc = _decode(BATCH, body)
    horizon = _horizon(doc.horizon, rules)
    quantiles = _quantiles(doc.quantiles, rules)
    series = doc.series
    if not series:
        raise InputError("series", "is empty; send at least one series")
    if len(series) > rules.max_batch_series:
        raise InputError(
            "series",
            f"{len(series)} series; at most {rules.max_batch_series} per call "
            "(SLOCAST_MAX_BATCH_SERIES)",
            status=413,
        )
    ids = [item.id for item in series]
    for i, sid in enumerate(ids):
        if type(sid) is int and not _ID_MIN <= sid <= _ID_MAX:
            raise InputError(
                f"series[{i}].id",
                f"integer id {sid} is outside the 64-bit range (-2**63 to 2**64-1); "
                "send it as a string",
            )
    if len(set(ids)) != len(ids):
        seen: set = set()
        for i, sid in enumerate(ids):
            if sid in seen:
                raise InputError(f"series[{i}].id", f"duplicate id {sid!r}; ids must be unique")
            seen.add(sid)
    fast = _batch_fast(series, rules)
    if fast is None:
        # Something is off (or histories differ in length): check series by series, so
        # the error names the first offending field exactly.
        parts = [
            _history(item.history, f"series[{i}].history", rules) for i, item in enumerate(series)
        ]
        fast = np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts])
    times, values = fast
    _check_forecast_times(int(times.view(np.int64).max()), horizon, rules, "series")
    return ParsedRequest(times, values, ids, horizon, quantiles)


def _decode(decoder: msgspec.json.Decoder, body: bytes):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InputError("body", f"is not valid JSON: {exc}", status=400) from None


def _invalid(error: str) -> InputError:
    """msgspec's ``<message> - at `$.history[3].down``` as an InputError on that field."""
    message, _, path = error.partition(" - at `$")
    field = path.rstrip("`").lstrip(".")
    if message.startswith("Number out of range"):
        where = f" at {field}" if field else ""
        return InputError("body", f"number out of range{where}: beyond a double", status=400)
    # A missing or unknown key is reported on its object; at the top level, on the key.
    key = message.rsplit("`", 2)[1] if message.startswith("Object ") else None
    return InputError(field or key or "body", message[:1].lower() + message[1:])


_LATEST_NS = int(np.iinfo(np.int64).max)


def _check_forecast_times(last: int, horizon: int, rules: RequestRules, field: str) -> None:
    """Forecast times must fit datetime64[ns] (up to 2262-04-11), or they would wrap around;
    ``last`` is the latest history time in ns."""
    if last > _LATEST_NS - horizon * rules.step_ns:
        raise InputError(
            field,
            f"history ends at {_fmt(np.datetime64(last, 'ns'))}: forecasts {horizon} step(s) later would fall "
            f"after {_fmt(np.datetime64(_LATEST_NS, 'ns'))}, the latest time slocast represents",
        )


def _batch_fast(series: list, rules: RequestRules) -> tuple[np.ndarray, np.ndarray] | None:
    """A whole valid batch at once when every history has one length: one conversion
    of all rows and timestamps, one grid check. None on any problem (the per-series
    path then names it exactly)."""
    n = len(series[0].history)
    if n < max(rules.history_rows, 2) or n > rules.max_history_rows:
        return None
    if any(len(item.history) != n for item in series):
        return None
    flat = [row for item in series for row in item.history]
    stamps = list(map(_TIME, flat))
    try:
        times = np.array(stamps, dtype="datetime64[ns]")
    except (ValueError, OverflowError):
        return None
    if not _years_held(stamps):
        return None
    # The grid rule per series: every delta within the tolerance of the step (NaT,
    # duplicates and disorder all fall outside it).
    deltas = np.diff(times.view(np.int64).reshape(len(series), n), axis=1)
    if not (
        deltas.min() >= rules.step_ns - rules.tolerance_ns
        and deltas.max() <= rules.step_ns + rules.tolerance_ns
    ):
        return None
    keep = rules.history_rows
    c = len(FEATURE_COLUMNS)
    values = _cells(flat).reshape(len(series), n, c)[:, -keep:].reshape(-1, c)
    if (values < rules.value_floor).any():
        return None
    times = times.reshape(len(series), n)[:, -keep:].reshape(-1)
    return times, np.ascontiguousarray(values)


def _horizon(value: int, rules: RequestRules) -> int:
    if not 1 <= value <= rules.max_horizon:
        raise InputError(
            "horizon",
            f"{value} is out of range; this model forecasts 1 to {rules.max_horizon} step(s)",
        )
    return value


def _quantiles(value: list[float] | None, rules: RequestRules) -> tuple[float, ...]:
    if value is None:
        return rules.default_quantiles
    out: list[float] = []
    for i, q in enumerate(value):
        level = float(q)
        if level not in rules.levels:
            raise InputError(
                f"quantiles[{i}]",
                f"level {q} is not calibrated for this model; available: {rules.available()}",
            )
        if level not in out:
            out.append(level)
    return tuple(out)


def _history(rows: list, field: str, rules: RequestRules) -> tuple[np.ndarray, np.ndarray]:
    n = len(rows)
    if n < rules.history_rows:
        raise InputError(
            field,
            f"{n} row(s); the model needs at least {rules.history_rows} "
            "(its input window), oldest first",
        )
    if n > rules.max_history_rows:
        raise InputError(
            field,
            f"{n} rows; at most {rules.max_history_rows} (SLOCAST_MAX_HISTORY_ROWS); "
            f"only the last {rules.history_rows} are used",
            status=413,
        )
    times = _times(list(map(_TIME, rows)), field)
    _check_grid(times, field, rules)
    # Every cell is a finite double: msgspec refuses null, strings, booleans, NaN and
    # Infinity literals and numbers beyond a double's range. Older rows are not used.
    keep = rules.history_rows
    cells = _cells(rows[-keep:])
    low = cells < rules.value_floor
    if low.any():
        row, column = (int(i) for i in np.argwhere(low)[0])
        floor = float(rules.value_floor[column])
        raise InputError(
            f"{field}[{n - keep + row}].{FEATURE_COLUMNS[column]}",
            f"is {cells[row, column]:g}; the lowest value accepted is {floor:g} "
            "(counts, volumes and resource-block shares cannot be negative)",
        )
    return times[-keep:], cells


def _cells(rows: list) -> np.ndarray:
    """The feature cells of decoded rows, (rows, C) float64, in column order."""
    count = len(rows) * len(FEATURE_COLUMNS)
    flat = np.fromiter(chain.from_iterable(map(_CELLS, rows)), np.float64, count)
    return flat.reshape(len(rows), len(FEATURE_COLUMNS))


def _times(stamps: list[str], field: str) -> np.ndarray:
    try:
        # numpy parses ISO-8601 in C (~0.6 us a stamp); offsets and "Z" convert to UTC.
        times = np.array(stamps, dtype="datetime64[ns]")
    except (ValueError, OverflowError):
        times = None
    if times is None or not _years_held(stamps):
        for i, s in enumerate(stamps):
            problem = _stamp_problem(s)
            if problem is not None:
                raise InputError(f"{field}[{i}].{TIME_COLUMN}", problem)
        if times is None:
            raise InputError(f"{field}", "cannot parse the timestamps")
    return times


def _years_held(stamps: list[str]) -> bool:
    """Every stamp opens with a 4-digit year datetime64[ns] holds whole (few distinct
    prefixes, so a set is cheaper than a check per stamp)."""
    return all("1678-" <= p <= "2261-" and p[4:] == "-" for p in set(map(_YEAR, stamps)))


def _stamp_problem(stamp: str) -> str | None:
    """Why one stamp is refused, or None when it is a representable ISO-8601 time."""
    unparsable = f"cannot parse {stamp!r} as an ISO-8601 timestamp, e.g. {_ISO_EXAMPLE}"
    if not (stamp[:4].isdigit() and stamp[4:5] == "-"):
        return unparsable
    try:
        # Microseconds hold any 4-digit year, so this one does not wrap.
        when = np.array([stamp], dtype="datetime64[us]")[0]
    except (ValueError, OverflowError):
        return unparsable
    if not _EARLIEST_US <= when <= _LATEST_US:
        return (
            f"{stamp!r} is outside the times slocast represents "
            f"({_fmt(_EARLIEST_US)} to {_fmt(_LATEST_US)})"
        )
    return None


def _check_grid(times: np.ndarray, field: str, rules: RequestRules) -> None:
    ns = times.view(np.int64)
    low, high = rules.step_ns - rules.tolerance_ns, rules.step_ns + rules.tolerance_ns
    # Fast path. NaT ("" or "NaT" stamps) is the minimum int64, so any delta next
    # to it fails the bounds and is reported below. Short histories (the single
    # forecast) check in Python ints: cheaper than three NumPy calls.
    if ns.size <= _PYTHON_GRID_UP_TO:
        stamps = ns.tolist()
        deltas = list(map(sub, stamps[1:], stamps[:-1]))
        if deltas and low <= min(deltas) and max(deltas) <= high:
            return
    deltas = np.diff(ns)
    if deltas.size and low <= deltas.min() and deltas.max() <= high:
        return
    nat = np.isnat(times)
    if nat.any():
        i = int(np.flatnonzero(nat)[0])
        raise InputError(f"{field}[{i}].{TIME_COLUMN}", "is not a timestamp")
    # Same order as the dataset rules: duplicates, then order, then spacing.
    for bad, problem in ((deltas == 0, "duplicate"), (deltas < 0, "unsorted")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = f"{field}[{i + 1}].{TIME_COLUMN}"
            if problem == "duplicate":
                raise InputError(where, f"duplicate timestamp {_fmt(times[i + 1])}")
            raise InputError(
                where,
                f"timestamps not sorted ({_fmt(times[i + 1])} after {_fmt(times[i])}); "
                "send oldest first",
            )
    if deltas.size == 0:  # a single row: nothing else to check
        return
    i = int(np.flatnonzero(np.abs(deltas - rules.step_ns) > rules.tolerance_ns)[0])
    raise InputError(
        f"{field}[{i + 1}].{TIME_COLUMN}",
        f"irregular spacing: {deltas[i] / 1e9:g}s after the previous row where the model's "
        f"step is {rules.step_ns / 1e9:g}s (tolerance {rules.tolerance_ns / rules.step_ns:.0%}); "
        "fill the gap first",
    )


def _fmt(when: np.datetime64) -> str:
    return str(np.datetime_as_string(when, unit="s"))
