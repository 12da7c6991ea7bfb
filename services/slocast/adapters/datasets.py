"""Loading and validating LTE datasets (CSV or Parquet).

Every rule failure raises :class:`DatasetError` with one line that names the
file, the column or row, and what to fix; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from slocast.core.config import PipelineConfig
from slocast.core.errors import DatasetError
from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN

FLOAT32_MAX = float(np.finfo(np.float32).max)
ISO_EXAMPLE = "2018-02-05 23:40:00 or 2018-02-05T23:40:00+01:00"
# ``frame.attrs`` key of a validated frame: whether its times carried UTC offsets
# (True), none did (False), or the file's own type said (Parquet: None, not checked).
UTC_OFFSETS = "utc_offsets"
_OFFSET = r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"
# A value this many times a column's 99th percentile of non-zero magnitudes is a
# corrupt cell (a wrapped 64-bit counter, 1e30), not traffic: one such cell wrecks
# every family's scaling and scores. Real columns stay within a few times theirs,
# and a scaled site (a whole column x0.001) moves its percentile with it.
OUTLIER_FACTOR = 1e6
OUTLIER_QUANTILE = 0.99
CSV_SUFFIXES = (".csv", ".txt", ".gz")
# The header is checked before pandas reads the file: pandas builds every column
# of a header of 100,000 commas (minutes and gigabytes) before any check could run.
MAX_HEADER_BYTES = 64 * 1024
MAX_COLUMNS = 1_000


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file as strings-or-numbers, without interpretation."""
    p = Path(path)
    try:
        if not p.is_file():
            raise DatasetError(f"{p}: file not found")
        empty = p.stat().st_size == 0
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise DatasetError(f"{p}: cannot be opened: {exc.strerror or exc}") from None
    if empty:
        raise DatasetError(f"{p}: file is empty")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            # (pyarrow refuses duplicated column names itself: one line via _first_line)
            return pd.read_parquet(p)
        if suffix in CSV_SUFFIXES:
            _check_header(p)
            # index_col=False: a trailing comma on every row is an empty last field,
            # not a reason to make the first column the index.
            frame = pd.read_csv(p, index_col=False)
            frame.columns = [str(c).strip() for c in frame.columns]
            _check_row_lengths(p)
            return frame
    except DatasetError:
        raise
    except (ValueError, OSError, csv.Error) as exc:
        raise DatasetError(f"{p}: cannot be read as {suffix[1:]}: {_first_line(exc)}") from None
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{p}: file is empty") from None
    raise DatasetError(f"{p}: unsupported file type {suffix!r}; use .csv or .parquet")


def _first_line(exc: Exception) -> str:
    """A library's error on one line (pyarrow's name the whole schema after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _opener(path: Path):
    return gzip.open if path.suffix.lower() == ".gz" else open


def _check_header(path: Path) -> None:
    """The CSV header, read alone and bounded: a sane size and column count, one
    name per column, and a delimiter that is a comma."""
    with _opener(path)(path, "rt", encoding="utf-8", newline="") as handle:
        line = handle.readline(MAX_HEADER_BYTES + 1)
    if len(line) > MAX_HEADER_BYTES:
        raise DatasetError(
            f"{path}: the header line is longer than {MAX_HEADER_BYTES} characters; "
            "the file needs one header of column names"
        )
    names = [name.strip() for name in next(csv.reader([line]), [])]
    if len(names) > MAX_COLUMNS:
        raise DatasetError(f"{path}: the header has {len(names)} columns; at most {MAX_COLUMNS}")
    if len(names) == 1:
        for delimiter, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if delimiter in names[0]:
                raise DatasetError(
                    f"{path}: the header is one column, {names[0][:60]!r}; the file seems "
                    f"separated by {label}: save it with commas"
                )
    seen: set[str] = set()
    for name in names:
        if name in seen and name:
            raise DatasetError(f"{path}: column {name!r} appears twice in the header; keep one")
        seen.add(name)


def _check_row_lengths(path: Path) -> None:
    """Refuse a row with fewer fields than the header: pandas fills it with empty
    cells, which would pass for missing measurements (a file cut mid-line, a
    line broken in two)."""
    with _opener(path)(path, "rt", encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, [])
        for row in rows:
            if row and len(row) < len(header):
                if len(row) == len(header) - 1 and not header[-1].strip():
                    raise DatasetError(
                        f"{path}: the header ends with a comma (an unnamed last column) and "
                        f"line {rows.line_num} has no field for it; remove the header's "
                        "trailing comma"
                    )
                raise DatasetError(
                    f"{path}: line {rows.line_num} has {len(row)} fields where the header has "
                    f"{len(header)}; the file is cut short or a line is broken"
                )


def load_lte(
    path: str | Path, *, min_rows: int, config: PipelineConfig | None = None
) -> pd.DataFrame:
    """Load and validate an LTE file; see :func:`validate_lte`."""
    return validate_lte(read_table(path), source=str(path), min_rows=min_rows, config=config)


def validate_lte(
    frame: pd.DataFrame,
    *,
    source: str,
    min_rows: int,
    config: PipelineConfig | None = None,
) -> pd.DataFrame:
    """Check the schema and the time grid; return a clean frame.

    The result has a ``time`` column of ``datetime64[ns]`` and the feature
    columns as ``float64`` in canonical order; extra columns are dropped. NaN
    cells are kept (the preprocess stage applies the NaN rule).

    The grid rules come from ``config`` (default :class:`PipelineConfig`): an
    interval may be off a whole number of steps by ``spacing_tolerance`` of a
    step. A gap (an interval of k >= 2 steps) is refused unless it misses at most
    ``max_gap_rows`` rows: then those rows are inserted on the grid with every
    cell empty, i.e. not observed, like an empty cell (inputs carry the last
    observation forward, truth is never scored).
    """
    config = config or PipelineConfig()
    if frame.shape[0] == 0:
        raise DatasetError(f"{source}: no data rows")
    missing = [c for c in (TIME_COLUMN, *FEATURE_COLUMNS) if c not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {', '.join(missing)}")
    out = pd.DataFrame({TIME_COLUMN: _parse_times(frame[TIME_COLUMN], source)})
    offsets = _utc_offsets(frame[TIME_COLUMN], source)
    for column in FEATURE_COLUMNS:
        out[column] = _numeric_column(frame[column], column, source)
    gaps = _check_grid(out[TIME_COLUMN], source, config.spacing_tolerance, config.max_gap_rows)
    out = _fill_gaps(out, gaps)
    if len(out) < min_rows:
        raise DatasetError(
            f"{source}: {len(out)} rows, need at least {min_rows} for the window and splits"
        )
    out = out.reset_index(drop=True)
    out.attrs[UTC_OFFSETS] = offsets
    return out


def _utc_offsets(column: pd.Series, source: str) -> bool | None:
    """Whether text times carry UTC offsets: all of them or none (a file mixing both
    holds local and UTC times that no rule can put on one grid)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return None
    aware = column.astype(str).str.strip().str.contains(_OFFSET, regex=True).to_numpy()
    if aware.all() or not aware.any():
        return bool(aware.all())
    row = int(np.flatnonzero(aware != aware[0])[0])
    raise DatasetError(
        f"{source}: row {row}: {TIME_COLUMN!r} value {column.iloc[row]!r} "
        f"{'has' if aware[row] else 'lacks'} a UTC offset where row 0 "
        f"{'does not' if aware[row] else 'has one'}; give every timestamp an offset, or none"
    )


def _parse_times(column: pd.Series, source: str) -> pd.Series:
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise DatasetError(f"{source}: row {row}: empty {TIME_COLUMN!r}")
    if pd.api.types.is_datetime64_any_dtype(column):
        parsed = column
        if parsed.dt.tz is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        return _to_ns(parsed, column, source)
    if pd.api.types.is_numeric_dtype(column):
        # Seconds, milliseconds or nanoseconds since 1970 cannot be told apart.
        raise DatasetError(
            f"{source}: {TIME_COLUMN!r} holds numbers (row 0: {column.iloc[0]}); give "
            f"timestamps as ISO 8601 text, e.g. {ISO_EXAMPLE}"
        )
    # ISO 8601 only: a guessed format reads 05/02/2018 as 2 May and 13/02/2018 as
    # 13 February in the same file. Offsets (which change with daylight saving
    # time) are converted to UTC; timestamps without one are taken as they are.
    parsed = pd.to_datetime(column.astype(str), errors="coerce", format="ISO8601", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source}: row {row}: cannot parse {TIME_COLUMN!r} value {column.iloc[row]!r}; "
            f"timestamps must be ISO 8601, e.g. {ISO_EXAMPLE}"
        )
    return _to_ns(parsed.dt.tz_localize(None), column, source)


def _to_ns(parsed: pd.Series, column: pd.Series, source: str) -> pd.Series:
    """``datetime64[ns]``, what the pipeline computes in; pandas parses a wider range
    (microseconds) and refuses the cast with a traceback, so name the row instead."""
    outside = ((parsed < pd.Timestamp.min) | (parsed > pd.Timestamp.max)).to_numpy()
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DatasetError(
            f"{source}: {_row(source, row)}: {TIME_COLUMN!r} value {column.iloc[row]!r} is "
            f"outside {pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d}, the range of "
            "the nanosecond timestamps slocast computes in; fix its year"
        )
    return parsed.astype("datetime64[ns]")


def _numeric_column(column: pd.Series, name: str, source: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        raise DatasetError(f"{source}: column {name!r} has type {column.dtype}, expected numbers")
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(
            f"{source}: row {row}: column {name!r} has non-numeric value {column.iloc[row]!r}"
        )
    values = values.astype(np.float64)
    if np.isinf(values.to_numpy()).any():
        row = int(np.flatnonzero(np.isinf(values.to_numpy()))[0])
        raise DatasetError(f"{source}: row {row}: column {name!r} is infinite")
    # Models compute in single precision, where a larger magnitude is infinite.
    beyond = np.abs(values.to_numpy()) > FLOAT32_MAX
    if beyond.any():
        row = int(np.flatnonzero(beyond)[0])
        raise DatasetError(
            f"{source}: row {row}: column {name!r} is {values.iloc[row]:g}, beyond the "
            f"single-precision range the models compute in (|x| <= {FLOAT32_MAX:.4g})"
        )
    if values.isna().all():
        raise DatasetError(f"{source}: column {name!r} has no values (all empty)")
    _check_magnitudes(values.to_numpy(), name, source)
    return values


def _check_magnitudes(values: np.ndarray, name: str, source: str) -> None:
    """Refuse a cell more than ``OUTLIER_FACTOR`` times the column's bulk (see there)."""
    magnitude = np.abs(values)
    nonzero = magnitude[magnitude > 0]  # NaN compares False: empty cells drop out
    if nonzero.size == 0:
        return
    typical = float(np.quantile(nonzero, OUTLIER_QUANTILE))
    beyond = magnitude > OUTLIER_FACTOR * typical
    if beyond.any():
        row = int(np.flatnonzero(beyond)[0])
        raise DatasetError(
            f"{source}: {_row(source, row)}: column {name!r} is {values[row]:g}, more than "
            f"{OUTLIER_FACTOR:g} times the column's {OUTLIER_QUANTILE * 100:.0f}th percentile of "
            f"non-zero magnitudes ({typical:g}): a corrupt cell (e.g. a wrapped counter)? "
            "Fix it, or blank the cell (empty cells are treated as missing)"
        )


def _row(source: str, row: int) -> str:
    """A data row as the other messages count it (from 0) and, in a CSV file, its line
    (from 1, the header is line 1; off if the file has blank lines, which are skipped)."""
    if Path(source).suffix.lower() in CSV_SUFFIXES:
        return f"row {row} (line {row + 2})"
    return f"row {row}"


def _check_grid(
    times: pd.Series, source: str, tolerance: float, max_gap_rows: int
) -> list[tuple[int, int]]:
    """Refuse a broken grid; return the gaps to fill as (row after the gap, rows missing)."""
    if len(times) < 2:
        return []
    ns = times.to_numpy().astype("datetime64[ns]").astype(np.int64)
    deltas = np.diff(ns)
    duplicate = np.flatnonzero(deltas == 0)
    if duplicate.size:
        row = int(duplicate[0]) + 1
        raise DatasetError(f"{source}: row {row}: duplicate timestamp {times.iloc[row]}")
    backwards = np.flatnonzero(deltas < 0)
    if backwards.size:
        row = int(backwards[0]) + 1
        raise DatasetError(
            f"{source}: row {row}: timestamps not sorted ({times.iloc[row]} after {times.iloc[row - 1]})"
        )
    step = float(np.median(deltas))
    steps = np.rint(deltas / step)
    on_grid = (np.abs(deltas - steps * step) <= tolerance * step) & (steps >= 1)
    gaps: list[tuple[int, int]] = []
    for i in np.flatnonzero(~on_grid | (steps != 1)):
        row, missing = int(i) + 1, int(steps[i]) - 1
        where = f"{source}: row {row}: {deltas[i] / 1e9:.0f}s after the previous row where the step is {step / 1e9:.0f}s"
        if not on_grid[i]:
            raise DatasetError(
                f"{where}: irregular spacing (tolerance {tolerance:.0%} of a whole number of "
                "steps); resample the file onto its grid"
            )
        if missing > max_gap_rows:
            raise DatasetError(
                f"{where}: a gap of {missing} missing row(s); fill or split it, or allow gaps of "
                f"up to N missing rows with --max-gap-rows N (now {max_gap_rows}), which "
                "inserts them as empty cells"
            )
        gaps.append((row, missing))
    return gaps


def _fill_gaps(frame: pd.DataFrame, gaps: list[tuple[int, int]]) -> pd.DataFrame:
    """Insert each gap's missing rows on the grid (times between its neighbours), cells empty."""
    if not gaps:
        return frame
    times = frame[TIME_COLUMN].to_numpy().astype("datetime64[ns]").astype(np.int64)
    parts, start = [], 0
    for row, missing in gaps:
        parts.append(frame.iloc[start:row])
        before, after = times[row - 1], times[row]
        # Evenly between the neighbours: the grid of this gap, whatever the jitter.
        inserted = before + (after - before) * np.arange(1, missing + 1) // (missing + 1)
        parts.append(pd.DataFrame({TIME_COLUMN: inserted.astype("datetime64[ns]")}))
        start = row
    parts.append(frame.iloc[start:])
    filled = pd.concat(parts, ignore_index=True)
    return filled[[TIME_COLUMN, *FEATURE_COLUMNS]].astype({c: np.float64 for c in FEATURE_COLUMNS})


def step_seconds(times: pd.Series | np.ndarray) -> float:
    """The dataset's row interval (median difference), in seconds."""
    ns = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
    return float(np.median(np.diff(ns))) / 1e9
