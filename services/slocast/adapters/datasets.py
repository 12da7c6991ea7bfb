"""Loading and validating LTE datasets (CSV or Parquet).

Every rule failure raises :class:`DatasetError` with one line that names the
file, the column or row, and what to fix; the CLI turns it into exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slocast.core.errors import DatasetError
from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file as strings-or-numbers, without interpretation."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise DatasetError(f"{p}: file is empty")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix in (".csv", ".txt", ".gz"):
            return pd.read_csv(p)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{p}: cannot be read as {suffix[1:]}: {exc}") from None
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{p}: file is empty") from None
    raise DatasetError(f"{p}: unsupported file type {suffix!r}; use .csv or .parquet")


def load_lte(path: str | Path, *, min_rows: int, spacing_tolerance: float = 0.1) -> pd.DataFrame:
    """Load and validate an LTE file; see :func:`validate_lte`."""
    return validate_lte(
        read_table(path), source=str(path), min_rows=min_rows, spacing_tolerance=spacing_tolerance
    )


def validate_lte(
    frame: pd.DataFrame,
    *,
    source: str,
    min_rows: int,
    spacing_tolerance: float = 0.1,
) -> pd.DataFrame:
    """Check the schema and the time grid; return a clean frame.

    The result has a ``time`` column of ``datetime64[ns]`` and the feature
    columns as ``float64`` in canonical order; extra columns are dropped. NaN
    cells are kept (the preprocess stage applies the NaN rule).
    """
    if frame.shape[0] == 0:
        raise DatasetError(f"{source}: no data rows")
    missing = [c for c in (TIME_COLUMN, *FEATURE_COLUMNS) if c not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {', '.join(missing)}")
    out = pd.DataFrame({TIME_COLUMN: _parse_times(frame[TIME_COLUMN], source)})
    for column in FEATURE_COLUMNS:
        out[column] = _numeric_column(frame[column], column, source)
    _check_grid(out[TIME_COLUMN], source, spacing_tolerance)
    if len(out) < min_rows:
        raise DatasetError(
            f"{source}: {len(out)} rows, need at least {min_rows} for the window and splits"
        )
    return out.reset_index(drop=True)


def _parse_times(column: pd.Series, source: str) -> pd.Series:
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise DatasetError(f"{source}: row {row}: empty {TIME_COLUMN!r}")
    if pd.api.types.is_datetime64_any_dtype(column):
        parsed = column
    else:
        parsed = pd.to_datetime(column, errors="coerce", format="mixed")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                f"{source}: row {row}: cannot parse {TIME_COLUMN!r} value {column.iloc[row]!r}"
            )
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
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
    if values.isna().all():
        raise DatasetError(f"{source}: column {name!r} has no values (all empty)")
    return values


def _check_grid(times: pd.Series, source: str, tolerance: float) -> None:
    if len(times) < 2:
        return
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
    off = np.flatnonzero(np.abs(deltas - step) > tolerance * step)
    if off.size:
        row = int(off[0]) + 1
        raise DatasetError(
            f"{source}: row {row}: irregular spacing, {deltas[off[0]] / 1e9:.0f}s after the previous row "
            f"where the step is {step / 1e9:.0f}s (tolerance {tolerance:.0%}); fill or split the gap"
        )


def step_seconds(times: pd.Series | np.ndarray) -> float:
    """The dataset's row interval (median difference), in seconds."""
    ns = np.asarray(times).astype("datetime64[ns]").astype(np.int64)
    return float(np.median(np.diff(ns))) / 1e9
