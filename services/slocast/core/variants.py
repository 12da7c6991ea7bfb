"""Generated site variants: one real site rewritten into the regimes we cannot see.

The other sites of the LTE dataset are held out, so the failure modes reported
on them (issue 12) are reproduced from the one site we have. Each variant is a
deterministic rewrite of a (training file, test file) pair with the same schema:

- ``original``: the files unchanged (the reference).
- ``shift-up-x0.1``: ``up`` multiplied by 0.1 from the first row of the last 20%
  of the training file onward (validation and test): a site whose uplink level
  falls after the training period (issue 12: ~1.2e7 -> ~1e6).
- ``shift-down-x10``: ``down`` multiplied by 10 from the same row onward.
- ``test-shift-up-x0.1``: ``up`` multiplied by 0.1 in the test file only: a level
  change after everything the pipeline may look at (validation does not show it,
  so no choice made on validation can anticipate it).
- ``short-25``: only the last 25% of the training file (a small, young site).
- ``small-x0.001``: ``down`` and ``up`` multiplied by 0.001 in both files: a
  low-traffic site (NRMSE is scale-free, so any difference from ``original``
  comes from a fixed floor or epsilon somewhere that assumed PobleSec's volumes).
- ``bursty-up``: ``up`` multiplied by bursts (episodes of 1-15 rows starting at
  random, 2% of rows, multiplier log-normal around 6x) over both files.
- ``busy-smooth``: the five traffic columns (the targets) plus 2.5x their own
  trailing 2-hour mean: a busy cell whose level dwarfs its bursts, where
  persistence is hard to beat (headline ~0.29 on PobleSec's test file, as on the
  quietest published site, anchors.md). The mean is trailing, so the added level
  carries no information about the future; each file uses only its own rows.
- ``noisy-short``: ``short-25`` with mean-preserving multiplicative noise on
  ``down`` and ``up`` (log-normal, sigma 0.2, independent per row) in both files:
  a small site whose volumes are noisier from one 2-minute row to the next,
  where persistence scores ~1.05 on PobleSec's test file (the published site
  with ~4,200 training rows has persistence 1.026, anchors.md). The noise is
  unpredictable by construction, so a forecaster should gain on persistence
  here by predicting the level, not the last row.
- ``gaps``: capture outages: runs of 1-30 rows removed from both files (0.3% of
  rows start one), plus one 2-hour outage in the training file. The pipeline
  refuses gaps by default; this variant runs with ``max_gap_rows`` = 60, which
  fills them with empty cells (never scored), so it shows what a site recorded
  with outages costs.

Except where a variant removes rows, columns, column order, time stamps and
empty cells are preserved; the shift
point is measured on the training file, as the pipeline's train/validation split
is (``val_fraction`` 0.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slocast.core.schema import TARGET_COLUMNS

if TYPE_CHECKING:  # pandas loads when variants are generated, not for `slocast --help`
    import pandas as pd

SHIFT_FRACTION = 0.8  # shifts start at the first row of the last 20% of the training file
SHORT_FRACTION = 0.25
BURST_START_PROBABILITY = 0.02
BURST_MAX_ROWS = 15
BURST_LOG_MEAN = float(np.log(6.0))
BURST_LOG_SD = 0.6
SEED = 20260212
BUSY_LEVEL = 2.5
BUSY_ROWS = 60  # 2 hours of 2-minute rows
NOISE_SIGMA = 0.2
OUTAGE_START_PROBABILITY = 0.003
OUTAGE_MAX_ROWS = 30
LONG_OUTAGE_ROWS = 60  # 2 hours, in the middle of the training file


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    apply: Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]
    max_gap_rows: int = 0  # the PipelineConfig.max_gap_rows its files need


def shift_start(train_rows: int) -> int:
    """Index (in the training file) of the first shifted row."""
    return int(np.floor(SHIFT_FRACTION * train_rows))


def _shift(column: str, factor: float):
    def apply(train: pd.DataFrame, test: pd.DataFrame):
        train, test = train.copy(), test.copy()
        start = shift_start(len(train))
        values = train[column].to_numpy(dtype=float, copy=True)
        values[start:] *= factor
        train[column] = values
        test[column] = test[column].to_numpy(dtype=float) * factor
        return train, test

    return apply


def _test_shift(column: str, factor: float):
    def apply(train: pd.DataFrame, test: pd.DataFrame):
        test = test.copy()
        test[column] = test[column].to_numpy(dtype=float) * factor
        return train.copy(), test

    return apply


def _scaled(columns: tuple[str, ...], factor: float):
    def apply(train: pd.DataFrame, test: pd.DataFrame):
        train, test = train.copy(), test.copy()
        for frame in (train, test):
            for column in columns:
                frame[column] = frame[column].to_numpy(dtype=float) * factor
        return train, test

    return apply


def _short(train: pd.DataFrame, test: pd.DataFrame):
    keep = int(np.ceil(SHORT_FRACTION * len(train)))
    return train.iloc[len(train) - keep :].reset_index(drop=True), test.copy()


def _noisy_short(train: pd.DataFrame, test: pd.DataFrame):
    train, test = _short(train, test)
    rng = np.random.default_rng(SEED)
    for frame in (train, test):
        for column in ("down", "up"):
            noise = np.exp(NOISE_SIGMA * rng.standard_normal(len(frame)) - NOISE_SIGMA**2 / 2)
            frame[column] = frame[column].to_numpy(dtype=float) * noise
    return train, test


def burst_multipliers(rows: int, seed: int = SEED) -> np.ndarray:
    """Multiplicative bursts: 1 outside bursts, >= 1 inside (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    out = np.ones(rows)
    starts = np.flatnonzero(rng.random(rows) < BURST_START_PROBABILITY)
    for start in starts:
        length = int(rng.integers(1, BURST_MAX_ROWS + 1))
        factor = max(1.0, float(rng.lognormal(BURST_LOG_MEAN, BURST_LOG_SD)))
        out[start : start + length] = np.maximum(out[start : start + length], factor)
    return out


def _bursty(column: str):
    def apply(train: pd.DataFrame, test: pd.DataFrame):
        train, test = train.copy(), test.copy()
        factors = burst_multipliers(len(train) + len(test))
        train[column] = train[column].to_numpy(dtype=float) * factors[: len(train)]
        test[column] = test[column].to_numpy(dtype=float) * factors[len(train) :]
        return train, test

    return apply


def _busy(train: pd.DataFrame, test: pd.DataFrame):
    def busy(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        for column in TARGET_COLUMNS:
            values = frame[column].astype(float)
            trailing = values.rolling(BUSY_ROWS, min_periods=1).mean()
            frame[column] = values + BUSY_LEVEL * trailing
        return frame

    return busy(train), busy(test)


def outage_rows(rows: int, seed: int = SEED) -> np.ndarray:
    """Rows lost to outages: runs of 1-``OUTAGE_MAX_ROWS`` rows, each followed by at
    least one kept row, so no gap is longer than a run (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    lost = np.zeros(rows, dtype=bool)
    row = 0
    while row < rows:
        if rng.random() < OUTAGE_START_PROBABILITY:
            length = int(rng.integers(1, OUTAGE_MAX_ROWS + 1))
            lost[row : row + length] = True
            row += length + 1
        else:
            row += 1
    return lost


def _gaps(train: pd.DataFrame, test: pd.DataFrame):
    lost = outage_rows(len(train) + len(test))
    middle = len(train) // 2
    lost[middle : middle + LONG_OUTAGE_ROWS] = True
    lost[middle - 1] = lost[middle + LONG_OUTAGE_ROWS] = False  # one gap, not merged
    # The first and last rows of each file stay: a file starts and ends on the grid.
    for first, last in ((0, len(train) - 1), (len(train), len(lost) - 1)):
        lost[first] = lost[last] = False
    keep_train, keep_test = ~lost[: len(train)], ~lost[len(train) :]
    return (
        train[keep_train].reset_index(drop=True),
        test[keep_test].reset_index(drop=True),
    )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("original", "the site as recorded", lambda a, b: (a.copy(), b.copy())),
        Variant(
            "shift-up-x0.1",
            "up x0.1 from the last 20% of the training file on",
            _shift("up", 0.1),
        ),
        Variant(
            "shift-down-x10",
            "down x10 from the last 20% of the training file on",
            _shift("down", 10.0),
        ),
        Variant(
            "test-shift-up-x0.1",
            "up x0.1 in the test file only (unseen in validation)",
            _test_shift("up", 0.1),
        ),
        Variant("short-25", "only the last 25% of the training file", _short),
        Variant(
            "small-x0.001",
            "down and up x0.001 in both files (a low-traffic site)",
            _scaled(("down", "up"), 0.001),
        ),
        Variant("bursty-up", "multiplicative bursts on up (2% of rows start one)", _bursty("up")),
        Variant(
            "busy-smooth",
            "targets + 2.5x their trailing 2-hour mean (persistence hard to beat)",
            _busy,
        ),
        Variant(
            "noisy-short",
            "short-25 with log-normal noise (sigma 0.2) on down and up (a small noisy site)",
            _noisy_short,
        ),
        Variant(
            "gaps",
            "outages: 1-30 row gaps (0.3% of rows start one) and a 2-hour one, filled as empty",
            _gaps,
            max_gap_rows=LONG_OUTAGE_ROWS,
        ),
    )
}


def read_raw(path: Path) -> pd.DataFrame:
    """A CSV as written (time stamps kept as text, so they are written back unchanged)."""
    import pandas as pd

    return pd.read_csv(path, dtype={"time": str})


def generate_variants(
    train_path: Path,
    test_path: Path,
    out_dir: Path,
    names: Sequence[str] | None = None,
    *,
    site: str | None = None,
) -> dict[str, tuple[Path, Path]]:
    """Write ``<site>-<variant>.csv`` and ``<site>-<variant>_test.csv`` for each variant."""
    unknown = [n for n in names or () if n not in VARIANTS]
    if unknown:
        raise KeyError(
            f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    site = site or Path(train_path).stem
    train, test = read_raw(Path(train_path)), read_raw(Path(test_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names or VARIANTS:
        new_train, new_test = VARIANTS[name].apply(train, test)
        stem = f"{site}-{name}"
        paths = (out_dir / f"{stem}.csv", out_dir / f"{stem}_test.csv")
        new_train.to_csv(paths[0], index=False)
        new_test.to_csv(paths[1], index=False)
        written[name] = paths
    return written
