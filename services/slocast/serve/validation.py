"""Request bodies -> validated numpy arrays, or a 4xx naming the offending field.

This is the HTTP-edge mirror of the dataset rules in :mod:`slocast.core.datasets`
(every feature column present and numeric, no infinite values, timestamps sorted,
unique and on the model's grid), plus the serving rules: at least the model's
history length of rows, no null cells (a client fills gaps; the server does not
guess), only calibrated quantiles, a horizon the model was trained for.

Parsing is columnar and allocation-light on purpose: orjson decodes the body, one
pass checks every row's keys against a frozenset, ``set(map(type, ...))`` checks
every cell's type in C, and numpy converts and checks the grid. Pydantic models in
:mod:`slocast.serve.schemas` document the same bodies in OpenAPI but are not run
per request (they would cost more than the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import sub
from typing import NoReturn

import numpy as np
import orjson

from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN

ROW_KEYS = frozenset((TIME_COLUMN, *FEATURE_COLUMNS))
_ROW_SIZE = {len(ROW_KEYS)}
_FORECAST_KEYS = frozenset(("history", "horizon", "quantiles"))
_BATCH_KEYS = frozenset(("series", "horizon", "quantiles"))
_SERIES_KEYS = frozenset(("id", "history"))
_NUMBER_TYPES = frozenset((int, float))
_PYTHON_GRID_UP_TO = 64


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

    def available(self) -> str:
        return ", ".join(self.levels.values()) or "none"


@dataclass(frozen=True)
class ParsedRequest:
    """Series stacked end to end, each trimmed to its last ``history_rows`` rows."""

    times: np.ndarray  # datetime64[ns], (S * rows,)
    values: np.ndarray  # float64, (S * rows, C) in FEATURE_COLUMNS order
    ids: list | None  # series ids for a batch, None for a single forecast
    horizon: int
    quantiles: tuple[float, ...]


def parse_forecast(body: bytes, rules: RequestRules) -> ParsedRequest:
    doc = _object(body, _FORECAST_KEYS, required=("history",))
    horizon = _horizon(doc.get("horizon", 1), rules)
    quantiles = _quantiles(doc.get("quantiles"), rules)
    times, values = _history(doc["history"], "history", rules)
    _check_forecast_times(times, horizon, rules, "history")
    return ParsedRequest(times, values, None, horizon, quantiles)


def parse_batch(body: bytes, rules: RequestRules) -> ParsedRequest:
    doc = _object(body, _BATCH_KEYS, required=("series",))
    horizon = _horizon(doc.get("horizon", 1), rules)
    quantiles = _quantiles(doc.get("quantiles"), rules)
    series = doc["series"]
    if type(series) is not list:
        raise InputError("series", f"expected a list of series, got {_kind(series)}")
    if not series:
        raise InputError("series", "is empty; send at least one series")
    if len(series) > rules.max_batch_series:
        raise InputError(
            "series",
            f"{len(series)} series; at most {rules.max_batch_series} per call "
            "(SLOCAST_MAX_BATCH_SERIES)",
            status=413,
        )
    fast = _batch_fast(series, rules)
    if fast is not None:
        times, values, ids = fast
        _check_forecast_times(times, horizon, rules, "series")
        return ParsedRequest(times, values, ids, horizon, quantiles)
    # Something is off (or histories differ in length): check series by series, so
    # the error names the first offending field exactly.
    ids: list = []
    seen: set = set()
    times_parts, value_parts = [], []
    for i, item in enumerate(series):
        where = f"series[{i}]"
        if type(item) is not dict:
            raise InputError(where, f"expected an object with id and history, got {_kind(item)}")
        if item.keys() != _SERIES_KEYS:
            _key_error(where, item, _SERIES_KEYS)
        sid = item["id"]
        if type(sid) not in (str, int):
            raise InputError(f"{where}.id", f"expected a string or integer, got {_kind(sid)}")
        if sid in seen:
            raise InputError(f"{where}.id", f"duplicate id {sid!r}; ids must be unique")
        seen.add(sid)
        ids.append(sid)
        t, v = _history(item["history"], f"{where}.history", rules)
        times_parts.append(t)
        value_parts.append(v)
    times = np.concatenate(times_parts)
    _check_forecast_times(times, horizon, rules, "series")
    return ParsedRequest(times, np.concatenate(value_parts), ids, horizon, quantiles)


_LATEST_NS = int(np.iinfo(np.int64).max)


def _check_forecast_times(times: np.ndarray, horizon: int, rules: RequestRules, field: str) -> None:
    """Forecast times must fit datetime64[ns] (up to 2262-04-11), or they would wrap around."""
    last = int(times.view(np.int64).max())
    if last > _LATEST_NS - horizon * rules.step_ns:
        raise InputError(
            field,
            f"history ends at {_fmt(times.max())}: forecasts {horizon} step(s) later would fall "
            f"after {_fmt(np.datetime64(_LATEST_NS, 'ns'))}, the latest time slocast represents",
        )


_ID_TYPES = (str, int)


def _batch_fast(series: list, rules: RequestRules) -> tuple[np.ndarray, np.ndarray, list] | None:
    """A whole valid batch at once: one pass over every row of every series.

    Runs exactly the checks of the per-series path (series shape, ids, row keys,
    cell types, timestamps, grid) on all histories together when they share one
    length. Any failure returns None without raising: the per-series path then
    runs and reports the first problem with its exact field and message.
    """
    first = series[0]
    if type(first) is not dict or type(first.get("history")) is not list:
        return None
    n = len(first["history"])
    if n < max(rules.history_rows, 2) or n > rules.max_history_rows:
        return None
    ids = []
    for item in series:
        if type(item) is not dict or item.keys() != _SERIES_KEYS:
            return None
        rows = item["history"]
        if type(rows) is not list or len(rows) != n or type(item["id"]) not in _ID_TYPES:
            return None
        ids.append(item["id"])
    if len(set(ids)) != len(ids):
        return None
    flat = [row for item in series for row in item["history"]]
    columns = _row_cells(flat)
    if columns is None:
        return None
    cells, stamps = columns
    if not set(map(type, cells)) <= _NUMBER_TYPES:
        return None
    if not all(type(s) is str for s in stamps):
        return None
    try:
        times = np.array(stamps, dtype="datetime64[ns]")
        values = np.array(cells, dtype=np.float64)
    except (ValueError, OverflowError):
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
    times = times.reshape(len(series), n)[:, -keep:].reshape(-1)
    values = values.reshape(len(series), n, c)[:, -keep:].reshape(-1, c)
    return times, values, ids


def _row_cells(rows: list) -> tuple[list, list] | None:
    """Feature cells (row-major, FEATURE_COLUMNS order) and time stamps of rows that
    are objects with exactly the row keys; None if any row is not.

    Exactly those keys without comparing key sets (~0.8 us a row): every row has
    as many entries as there are row keys and every key is found.
    """
    try:
        if set(map(len, rows)) != _ROW_SIZE:
            return None
        cells = [row[c] for row in rows for c in FEATURE_COLUMNS]
        stamps = [row[TIME_COLUMN] for row in rows]
    except (KeyError, TypeError):  # a missing key, or a row that is not an object
        return None
    return cells, stamps


def _object(body: bytes, allowed: frozenset, *, required: tuple[str, ...]) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("body", f"is not valid JSON: {exc}", status=400) from None
    if type(doc) is not dict:
        raise InputError("body", f"expected a JSON object, got {_kind(doc)}")
    extra = doc.keys() - allowed
    if extra:
        raise InputError(
            next(iter(sorted(extra))),
            f"unknown field(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}",
        )
    for name in required:
        if name not in doc:
            raise InputError(name, "is required")
    return doc


def _horizon(value: object, rules: RequestRules) -> int:
    if type(value) is not int:
        raise InputError("horizon", f"expected an integer, got {_kind(value)}")
    if not 1 <= value <= rules.max_horizon:
        raise InputError(
            "horizon",
            f"{value} is out of range; this model forecasts 1 to {rules.max_horizon} step(s)",
        )
    return value


def _quantiles(value: object, rules: RequestRules) -> tuple[float, ...]:
    if value is None:
        return rules.default_quantiles
    if type(value) is not list:
        raise InputError("quantiles", f"expected a list of levels, got {_kind(value)}")
    out: list[float] = []
    for i, q in enumerate(value):
        if type(q) not in _NUMBER_TYPES:
            raise InputError(f"quantiles[{i}]", f"expected a number, got {_kind(q)}")
        level = float(q)
        if level not in rules.levels:
            raise InputError(
                f"quantiles[{i}]",
                f"level {q} is not calibrated for this model; available: {rules.available()}",
            )
        if level not in out:
            out.append(level)
    return tuple(out)


def _history(rows: object, field: str, rules: RequestRules) -> tuple[np.ndarray, np.ndarray]:
    if type(rows) is not list:
        raise InputError(field, f"expected a list of rows, got {_kind(rows)}")
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
    columns = _row_cells(rows)
    if columns is None:
        _row_error(field, rows)
    cells, stamps = columns
    if not set(map(type, cells)) <= _NUMBER_TYPES:
        _type_error(field, rows)
    # No finiteness check needed: orjson refuses NaN/Infinity literals and numbers
    # beyond a double's range (a 400), and the type check above refused null.
    values = np.array(cells, dtype=np.float64).reshape(n, len(FEATURE_COLUMNS))
    times = _times(stamps, field)
    _check_grid(times, field, rules)
    keep = rules.history_rows
    return times[-keep:], values[-keep:]


def _times(stamps: list, field: str) -> np.ndarray:
    if not all(type(s) is str for s in stamps):
        i = next(i for i, s in enumerate(stamps) if type(s) is not str)
        raise InputError(
            f"{field}[{i}].{TIME_COLUMN}",
            f"expected an ISO-8601 timestamp string, got {_kind(stamps[i])}",
        )
    try:
        # numpy parses ISO-8601 in C (~0.6 us a stamp); offsets and "Z" convert to UTC.
        times = np.array(stamps, dtype="datetime64[ns]")
    except (ValueError, OverflowError):
        for i, s in enumerate(stamps):
            try:
                np.datetime64(s, "ns")
            except (ValueError, OverflowError):
                raise InputError(
                    f"{field}[{i}].{TIME_COLUMN}", f"cannot parse {s!r} as an ISO-8601 timestamp"
                ) from None
        raise InputError(f"{field}", "cannot parse the timestamps") from None
    return times


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


def _key_error(where: str, row: dict, expected: frozenset) -> None:
    missing = sorted(expected - row.keys(), key=_column_order)
    extra = sorted(str(k) for k in row.keys() - expected)
    parts = []
    if missing:
        parts.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        parts.append(f"unknown column(s) {', '.join(extra)}")
    raise InputError(where, "; ".join(parts))


def _row_error(field: str, rows: list) -> NoReturn:
    """Name the first row that is not an object with exactly the row keys."""
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise InputError(f"{field}[{i}]", f"expected an object, got {_kind(row)}")
        if row.keys() != ROW_KEYS:
            _key_error(f"{field}[{i}]", row, ROW_KEYS)
    raise InputError(field, "every row must be an object with time and the 11 columns")


def _type_error(field: str, rows: list) -> None:
    for i, row in enumerate(rows):
        for column in FEATURE_COLUMNS:
            value = row[column]
            if type(value) not in _NUMBER_TYPES:
                raise InputError(f"{field}[{i}].{column}", f"expected a number, got {_kind(value)}")


def _column_order(name: str) -> int:
    order = (TIME_COLUMN, *FEATURE_COLUMNS)
    return order.index(name) if name in order else len(order)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return {dict: "an object", list: "a list", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
