"""Every family learns: it beats persistence on held-out seasonal synthetic data.

This is the guard the upstream latency predictor lacked (its training was broken
while its tests passed against a stub): a model that does not learn fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.synthetic import generate_lte
from slocast.evaluate.scoring import score
from slocast.models import CANDIDATES, FAMILIES
from slocast.models.base import FitReport, Forecaster
from slocast.models.bundle import load_bundle, save_bundle
from slocast.preprocess.stage import preprocess
from slocast.train.stage import TrainingError, train_family


@pytest.fixture(scope="module")
def data():
    return preprocess(generate_lte(4000, seed=11), None, PipelineConfig())


@pytest.fixture(scope="module")
def persistence(data):
    return score(train_family(data, "persistence").bundle, data)


@pytest.mark.slow
@pytest.mark.parametrize("family", CANDIDATES)
def test_family_beats_persistence_on_held_out_windows(family, data, persistence, tmp_path):
    trained = train_family(data, family, seed=0)
    evaluation = score(trained.bundle, data)
    assert evaluation.nrmse["avg"] < 0.97 * persistence.nrmse["avg"], (
        family,
        evaluation.nrmse,
        persistence.nrmse,
    )
    for target, cov in evaluation.coverage["0.9"].items():
        assert 0.8 <= cov <= 0.98, (family, target, cov)
    # What is served is what was evaluated: a saved bundle predicts identically.
    save_bundle(trained.bundle, tmp_path / family)
    loaded = load_bundle(tmp_path / family)
    ends = data.ends("test")[:200]
    np.testing.assert_allclose(
        loaded.forecaster.predict(data.times, data.values, ends),
        trained.bundle.forecaster.predict(data.times, data.values, ends),
        rtol=1e-5,
    )
    assert not list(Path(tmp_path / family).rglob("*.pkl")) and not list(
        Path(tmp_path / family).rglob("*.pickle")
    )
    # Every forecast passes through the spec's floor (combiners average floored members).
    if family not in ("ensemble", "blend"):
        model = loaded.forecaster
        assert model.spec.target_floor == (0.0,) * len(model.spec.targets)
        model.spec = dataclasses.replace(model.spec, target_floor=(1e12,) * len(model.spec.targets))
        assert (model.predict(data.times, data.values, ends) == 1e12).all(), family


class _ConstantStub(Forecaster):
    family = "constant_stub"

    def fit(self, data, *, seed, progress=None):
        return FitReport()

    def refit(self, data, train_ends, *, seed):
        return self

    def predict(self, times, values, ends):
        return np.full((len(ends), self.spec.horizon, len(self.spec.targets)), 42.0)

    def save(self, directory):
        return []

    @classmethod
    def load(cls, directory, spec):
        return cls(spec)


def test_a_stub_model_is_refused(data, monkeypatch):
    monkeypatch.setitem(FAMILIES, "constant_stub", f"{__name__}:_ConstantStub")
    with pytest.raises(TrainingError, match="constant predictions"):
        train_family(data, "constant_stub")
