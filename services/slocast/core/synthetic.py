"""A deterministic synthetic LTE site: the default run's data and the tests' data.

The real traces cannot ship with the code, so this generator imitates their
structure: daily and weekly seasonality, autocorrelated load, heavy-tailed bursts
in traffic volume, columns that move together (users -> volume -> resource
blocks), modulation indices in 0..31, and a few empty cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from slocast.core.schema import DEFAULT_STEP_SECONDS, FEATURE_COLUMNS, TIME_COLUMN


def generate_lte(
    n_rows: int = 6000,
    *,
    seed: int = 0,
    start: str = "2018-02-05 00:00:00",
    step_seconds: int = DEFAULT_STEP_SECONDS,
    burst_rate: float = 0.01,
    nan_cells: int = 6,
) -> pd.DataFrame:
    """Return ``n_rows`` rows with the LTE schema, identical for identical arguments."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=n_rows, freq=pd.Timedelta(seconds=step_seconds))
    hours = (times.hour + times.minute / 60.0).to_numpy()
    weekday = times.day_of_week.to_numpy()

    daily = (
        0.55
        + 0.45 * np.sin(2 * np.pi * (hours - 9.0) / 24.0)
        + 0.15 * np.sin(4 * np.pi * hours / 24.0)
    )
    weekly = np.where(weekday >= 5, 0.7, 1.0)
    ar = _ar1(n_rows, phi=0.9, sigma=0.08, rng=rng)
    level = np.clip(daily * weekly * np.exp(ar), 0.05, None)

    bursts = rng.random(n_rows) < burst_rate
    burst_size = np.where(bursts, rng.pareto(2.5, n_rows) * 3.0, 0.0)
    burst_size = np.convolve(burst_size, [1.0, 0.6, 0.3], mode="full")[:n_rows]

    rnti = np.round(5400 * level * (1 + 0.05 * rng.standard_normal(n_rows)) + 300 * burst_size)
    per_user = 2.5e4 * np.exp(0.35 * rng.standard_normal(n_rows))
    down = rnti * per_user * (1 + burst_size)
    up = down * 0.09 * np.exp(0.5 * rng.standard_normal(n_rows))
    rb_down = np.clip(down / 3.5e9 * (1 + 0.1 * rng.standard_normal(n_rows)), 0, 1)
    rb_up = np.clip(up / 1.3e9 * (1 + 0.2 * rng.standard_normal(n_rows)), 0, 1)
    mcs_down = np.clip(16 - 6 * rb_down + 1.5 * rng.standard_normal(n_rows), 0, 31)
    mcs_up = np.clip(14 + 3 * rng.standard_normal(n_rows), 0, 31)

    columns = {
        "down": down,
        "up": up,
        "rnti_count": rnti,
        "mcs_down": mcs_down,
        "mcs_down_var": np.clip(77 + 18 * rng.standard_normal(n_rows), 1, None),
        "mcs_up": mcs_up,
        "mcs_up_var": np.clip(46 + 25 * rng.standard_normal(n_rows), 1, None),
        "rb_down": rb_down,
        "rb_down_var": np.abs(5.6e-8 + 2.5e-8 * rng.standard_normal(n_rows)),
        "rb_up": rb_up,
        "rb_up_var": np.abs(1.2e-8 + 1e-8 * rng.standard_normal(n_rows)),
    }
    frame = pd.DataFrame({TIME_COLUMN: times, **{c: columns[c] for c in FEATURE_COLUMNS}})
    if nan_cells:
        rows = rng.choice(np.arange(1, n_rows), size=min(nan_cells, n_rows - 1), replace=False)
        frame.loc[rows, ["mcs_up", "mcs_up_var"]] = np.nan
    return frame


def _ar1(n: int, *, phi: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import lfilter

    noise = sigma * rng.standard_normal(n)
    return lfilter([1.0], [1.0, -phi], noise)
