"""Test headline NRMSE (down and up) of a forecaster next to persistence's."""

from __future__ import annotations

from slocast.core.metrics import nrmse
from slocast.models.base import Forecaster
from slocast.models.baselines import Persistence
from slocast.preprocess.dataset import ProcessedDataset


def headlines(model: Forecaster, data: ProcessedDataset) -> tuple[float, float]:
    """(model, persistence) mean NRMSE of `down` and `up` on the test windows."""
    ends = data.ends("test")
    truth = data.truth(ends)[:, 0]
    ours = nrmse(truth, model.predict(data.times, data.values, ends)[:, 0])
    naive = nrmse(truth, Persistence(data.spec).predict(data.times, data.values, ends)[:, 0])
    return float(ours[3:].mean()), float(naive[3:].mean())
