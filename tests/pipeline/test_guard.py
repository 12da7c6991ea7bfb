"""The persistence guard: a family far worse than persistence on validation is out.

The stub below reproduces issue 12's failure on validation (it keeps predicting a
level 10x off) while looking perfect on test, so only the guard can keep it from
being promoted or joining the ensemble.
"""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.schema import TARGET_INDEX
from slocast.core.synthetic import generate_lte
from slocast.evaluate.promotion import decide
from slocast.evaluate.report import results_table
from slocast.evaluate.stage import assess
from slocast.models import FAMILIES
from slocast.models.base import FitReport, Forecaster
from slocast.models.ensemble import EnsembleForecaster
from slocast.models.guard import PERSISTENCE_GUARD_RATIO, judge
from slocast.preprocess.stage import preprocess
from slocast.train.stage import NoEligibleMembers, train_family


class _StaleLevelStub(Forecaster):
    """10x persistence on validation (a stale level); the exact truth on test."""

    family = "stale_level_stub"
    test_ends: frozenset[int] = frozenset()

    def fit(self, data, *, seed, progress=None):
        type(self).test_ends = frozenset(int(e) for e in data.ends("test"))
        return FitReport()

    def refit(self, data, train_ends, *, seed):
        return self

    def predict(self, times, values, ends):
        ends = np.asarray(ends, np.int64)
        stale = 10.0 * values[ends - 1][:, list(TARGET_INDEX)]
        exact = values[np.minimum(ends, len(values) - 1)][:, list(TARGET_INDEX)]
        on_test = np.array([int(e) in self.test_ends for e in ends])
        return np.where(on_test[:, None], exact, stale)[:, None, :]

    def save(self, directory):
        return []

    @classmethod
    def load(cls, directory, spec):
        return cls(spec)


class _NoChampion:
    def champion(self, task):
        return None


@pytest.fixture(scope="module")
def data():
    return preprocess(generate_lte(3000, seed=3), None, PipelineConfig())


@pytest.fixture
def trained(data, monkeypatch):
    monkeypatch.setitem(FAMILIES, "stale_level_stub", f"{__name__}:_StaleLevelStub")
    return {f: train_family(data, f) for f in ("persistence", "seasonal_naive", "stale_level_stub")}


def test_judge_uses_the_named_ratio():
    assert PERSISTENCE_GUARD_RATIO == 1.5
    assert not judge(1.4, 1.0).excluded
    assert not judge(1.5, 1.0).excluded
    verdict = judge(1.6, 1.0)
    assert verdict.excluded and "1.60x" in verdict.reason and "1.5x" in verdict.reason
    assert judge(float("nan"), 1.0).excluded


def test_decide_never_promotes_an_excluded_candidate():
    decision = decide(
        task="t",
        dataset_id="d",
        candidates={"broken": 0.5, "gru": 0.9},
        persistence=1.0,
        excluded={"broken": "too bad on validation"},
    )
    assert decision.winner == "gru" and decision.excluded == {"broken": "too bad on validation"}
    assert "broken" in decision.reason
    alone = decide(
        task="t",
        dataset_id="d",
        candidates={"broken": 0.5},
        persistence=1.0,
        excluded={"broken": "x"},
    )
    assert alone.winner is None and not alone.promoted
    # Without exclusions the decision id is what it always was.
    plain = decide(task="t", dataset_id="d", candidates={"gru": 0.9}, persistence=1.0)
    assert plain.excluded == {}
    assert (
        plain.decision_id
        == decide(
            task="t", dataset_id="d", candidates={"gru": 0.9}, persistence=1.0, excluded={}
        ).decision_id
    )


def test_a_family_stuck_at_a_stale_level_is_flagged_and_never_promoted(data, trained, tmp_path):
    models = {name: (m.bundle, None) for name, m in trained.items()}
    result = assess(_NoChampion(), data, task="t", models=models, scratch=tmp_path)
    stub = result.evaluations["stale_level_stub"]
    # Perfect on test, so without the guard it would win...
    assert stub.headline < 0.01 < result.evaluations["persistence"].headline
    # ...but validation shows a ~10x level error: flagged, excluded, not promoted.
    assert stub.excluded and stub.guard["ratio"] > PERSISTENCE_GUARD_RATIO
    assert stub.to_dict()["guard"]["reason"]
    assert result.decision.winner is None and not result.decision.promoted
    assert "stale_level_stub" in result.decision.excluded
    report = {
        "champion": result.champion_name,
        "models": {
            name: e.to_dict() | {"train_seconds": 0.0} for name, e in result.evaluations.items()
        },
    }
    line = next(r for r in results_table(report).splitlines() if r.startswith("stale_level_stub"))
    assert "EXCLUDED" in line


def test_the_ensemble_leaves_out_guarded_members(data, trained):
    members = {name: m.bundle.forecaster for name, m in trained.items()}
    model, report = EnsembleForecaster.from_members(data, members)
    assert "stale_level_stub" not in model.weights
    assert "stale_level_stub" in report.params["excluded"]
    # Nothing to combine: `slocast run` skips the ensemble rather than failing the run.
    with pytest.raises(NoEligibleMembers, match="persistence guard"):
        EnsembleForecaster.from_members(data, {"stale_level_stub": members["stale_level_stub"]})
