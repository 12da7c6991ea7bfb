"""Per target, the calibration variant that held out best on validation.

The variants are the number of predicted-change bins of the Mondrian calibration
(:mod:`slocast.core.conformal`): 1 (one pooled offset), 2, 3 or as many as the rows
allow (``change_bins``, the previous default for every target). How much the
residuals depend on the predicted change differs by target and by site, so each
target picks its own count: every variant is fitted on the first part of the
calibration rows (in time order) and scored by the P90 coverage of the last
``HOLDOUT_FRACTION`` of them, the part nearest to the forecasts it will bound. The
count whose held-out coverage is nearest to 0.9 wins (ties: more bins); the bundle
is then calibrated with it on every calibration row. Test rows are never read.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from slocast.core.conformal import Calibration

HOLDOUT_FRACTION = 1 / 3
CHOICE_LEVEL = 0.9
CANDIDATE_BINS: tuple[int, ...] = (1, 2, 3)
# Below this many held-out rows a coverage estimate is too noisy to choose with
# (standard error ~0.019 at 250 rows): the default count is kept.
MIN_HOLDOUT_ROWS = 250


def choose_bins(
    truth: np.ndarray,
    prediction: np.ndarray,
    scale: np.ndarray,
    change: np.ndarray,
    *,
    default_bins: int,
    bins_for_rows: Callable[[int], int],
) -> tuple[np.ndarray, dict]:
    """Bins per target (shape ``(K,)``) and the held-out coverage of every candidate.

    ``truth``/``prediction``/``scale``/``change``: calibration rows in time order,
    shape ``(N, horizon, K)``; ``bins_for_rows(n)`` is the most bins ``n`` rows allow.
    """
    n, k = truth.shape[0], truth.shape[-1]
    held = int(n * HOLDOUT_FRACTION)
    fit_rows = n - held
    if held < MIN_HOLDOUT_ROWS:
        return np.full(k, default_bins), {}
    candidates = sorted({*CANDIDATE_BINS, default_bins})
    covered: dict[int, np.ndarray] = {}
    for bins in candidates:
        cal = Calibration.fit(
            truth[:fit_rows],
            prediction[:fit_rows],
            (CHOICE_LEVEL,),
            scale=scale[:fit_rows],
            group_by=change[:fit_rows],
            bins=min(bins, bins_for_rows(fit_rows)),
        )
        upper = cal.upper(
            prediction[fit_rows:],
            CHOICE_LEVEL,
            scale[fit_rows:],
            change[fit_rows:] if cal.grouped else None,
        )
        covered[bins] = _coverage(truth[fit_rows:], upper)
    gaps = np.stack([np.abs(covered[b] - CHOICE_LEVEL) for b in candidates])  # (bins, K)
    # Ties go to more bins: argmin over the reversed candidate list.
    best = len(candidates) - 1 - np.argmin(gaps[::-1], axis=0)
    chosen = np.array([candidates[i] for i in best])
    return chosen, {str(b): covered[b].round(4).tolist() for b in candidates}


def _coverage(truth: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Share of observed cells at or under the bound, per target (all horizon steps)."""
    y = truth.reshape(-1, truth.shape[-1])
    u = upper.reshape(-1, upper.shape[-1])
    seen = np.isfinite(y)
    return np.where(seen, y <= u, False).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
