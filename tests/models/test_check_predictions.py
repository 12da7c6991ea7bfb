"""The trained-model sanity check: constant forecasts are refused at any scale."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.train.stage import TrainingError, check_predictions


@pytest.mark.parametrize("units", [1e8, 1.0, 1e-25])
def test_constant_forecasts_are_refused_and_varying_ones_kept_at_any_scale(units: float) -> None:
    """A site in tiny units (every value x1e-25) once had every family, persistence
    included, refused as constant: the check had an absolute floor."""
    rng = np.random.default_rng(0)
    truth = rng.gamma(2.0, 1.0, (500, 1, 5)) * units
    check_predictions("x", np.roll(truth, 1, axis=0), truth)
    with pytest.raises(TrainingError, match="constant predictions for rnti_count"):
        check_predictions("x", np.full_like(truth, truth.mean()), truth)
