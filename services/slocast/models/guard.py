"""The persistence guard: a family far worse than persistence on validation is out.

A model that maps globally scaled inputs to the levels it learned on the training
period keeps predicting the old level when a site's traffic shifts (issue 12: a
held-out site whose uplink fell from ~1.2e7 to ~1e6 after the first 80% of its
training file; GRU/LSTM were 2.2-2.3x worse than persistence on test, Prophet
13x). The validation split (the last 20% of the training file) sees such a shift
before the test does, so the guard compares each family's validation headline
NRMSE with persistence's on the same validation windows:

    excluded  <=>  val NRMSE(family) > PERSISTENCE_GUARD_RATIO * val NRMSE(persistence)

An excluded family is still trained, scored and reported (flagged, with the
reason), but it is never a candidate for promotion and never an ensemble member.
The bar is loose on purpose: the promotion rule already demands beating
persistence on test; the guard only removes models that are broken for this
site, so that they neither win nor dilute the ensemble. On PobleSec every
family's validation NRMSE is below persistence's (ratio < 1), far from 1.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from slocast.core.metrics import nrmse
from slocast.core.schema import HEADLINE_COLUMNS, TARGET_COLUMNS
from slocast.models.base import Forecaster
from slocast.models.baselines import Persistence
from slocast.preprocess.dataset import ProcessedDataset

PERSISTENCE_GUARD_RATIO = 1.5
_HEADLINE = [TARGET_COLUMNS.index(c) for c in HEADLINE_COLUMNS]


@dataclass(frozen=True)
class GuardResult:
    """One family's validation headline NRMSE against persistence's."""

    val_nrmse: float
    persistence_val_nrmse: float
    ratio: float
    excluded: bool
    reason: str | None
    limit: float = PERSISTENCE_GUARD_RATIO

    def to_dict(self) -> dict:
        return asdict(self)


def headline(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Mean over horizon steps of the protocol-A headline (down/up NRMSE average)."""
    return float(
        np.mean(
            [nrmse(truth[:, h], prediction[:, h])[_HEADLINE].mean() for h in range(truth.shape[1])]
        )
    )


def judge(
    val_nrmse: float, persistence_val_nrmse: float, *, limit: float = PERSISTENCE_GUARD_RATIO
) -> GuardResult:
    """The guard's verdict for one family (non-finite scores are excluded too)."""
    ratio = (
        val_nrmse / persistence_val_nrmse
        if np.isfinite(val_nrmse) and persistence_val_nrmse > 0
        else float("inf")
    )
    excluded = not ratio <= limit
    reason = (
        f"validation NRMSE {val_nrmse:.4f} is {ratio:.2f}x persistence's "
        f"({persistence_val_nrmse:.4f}); limit {limit:g}x"
        if excluded
        else None
    )
    return GuardResult(
        float(val_nrmse), float(persistence_val_nrmse), ratio, excluded, reason, limit
    )


def persistence_validation(data: ProcessedDataset) -> float:
    ends = data.ends("val")
    return headline(data.truth(ends), Persistence(data.spec).predict(data.times, data.values, ends))


def guard_forecasters(
    data: ProcessedDataset,
    forecasters: Mapping[str, Forecaster],
    *,
    predictions: Mapping[str, np.ndarray] | None = None,
    limit: float = PERSISTENCE_GUARD_RATIO,
) -> dict[str, GuardResult]:
    """The guard for each forecaster on ``data``'s validation split.

    ``predictions`` may supply validation forecasts already computed (same ends).
    """
    ends = data.ends("val")
    truth = data.truth(ends)
    reference = persistence_validation(data)
    out = {}
    for name, model in forecasters.items():
        prediction = (predictions or {}).get(name)
        if prediction is None:
            prediction = model.predict(data.times, data.values, ends)
        out[name] = judge(headline(truth, prediction), reference, limit=limit)
    return out
