"""A weighted average of other families, its weights chosen on validation.

Weights come from greedy forward selection with replacement (Caruana et al.,
2004): start from the best single member on the validation split and keep
adding the member whose inclusion most lowers the validation headline NRMSE,
until no addition helps. Members that are never picked get weight 0 and are not
stored. Averaging models whose errors are not perfectly correlated lowers the
variance of the forecast, and selection on validation keeps a weak member from
diluting a strong one. The test split is never consulted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from slocast.core.features import FeatureSpec
from slocast.core.metrics import nrmse
from slocast.core.schema import HEADLINE_COLUMNS, TARGET_COLUMNS
from slocast.models import CANDIDATES, family_class
from slocast.models.base import FitReport, Forecaster, Progress
from slocast.models.guard import guard_forecasters
from slocast.preprocess.dataset import ProcessedDataset

MEMBER_POOL: tuple[str, ...] = tuple(f for f in CANDIDATES if f != "ensemble")
MAX_ROUNDS = 25
_HEADLINE = [TARGET_COLUMNS.index(c) for c in HEADLINE_COLUMNS]


def headline_nrmse(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Mean over horizon steps of the protocol-A headline (down/up NRMSE average)."""
    return float(
        np.mean(
            [nrmse(truth[:, h], prediction[:, h])[_HEADLINE].mean() for h in range(truth.shape[1])]
        )
    )


def select_weights(predictions: Mapping[str, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    """Greedy forward selection with replacement; returns weights summing to 1."""
    if not predictions:
        raise ValueError("an ensemble needs at least one member")
    counts = dict.fromkeys(predictions, 0)
    total = np.zeros_like(next(iter(predictions.values())))
    best = np.inf
    for rounds in range(1, MAX_ROUNDS + 1):
        trial = {
            name: headline_nrmse(truth, (total + p) / rounds) for name, p in predictions.items()
        }
        name = min(trial, key=trial.get)
        if trial[name] >= best - 1e-9:
            break
        best = trial[name]
        counts[name] += 1
        total = total + predictions[name]
    used = sum(counts.values())
    return {name: count / used for name, count in counts.items() if count}


class EnsembleForecaster(Forecaster):
    family = "ensemble"

    def __init__(
        self,
        spec: FeatureSpec,
        members: Mapping[str, Forecaster] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(spec)
        self.members = dict(members or {})
        self.weights = dict(weights or {})

    @property
    def history_rows(self) -> int:
        return max([self.spec.window, *(m.history_rows for m in self.members.values())])

    @classmethod
    def from_members(
        cls, data: ProcessedDataset, members: Mapping[str, Forecaster]
    ) -> tuple[EnsembleForecaster, FitReport]:
        """Weight already-fitted members on the validation split (no refitting).

        Members failing the persistence guard (:mod:`slocast.models.guard`) are left out;
        when every member fails, there is no ensemble (``NoEligibleMembers``).
        """
        from slocast.train.stage import NoEligibleMembers

        ends = data.ends("val")
        truth = data.truth(ends)
        predictions = {
            name: m.predict(data.times, data.values, ends) for name, m in members.items()
        }
        verdicts = guard_forecasters(data, members, predictions=predictions)
        excluded = {name: v.reason for name, v in verdicts.items() if v.excluded}
        usable = {name: p for name, p in predictions.items() if name not in excluded}
        if not usable:
            raise NoEligibleMembers(
                "ensemble: every member fails the persistence guard ("
                + "; ".join(f"{name}: {reason}" for name, reason in excluded.items())
                + ")"
            )
        weights = select_weights(usable, truth)
        model = cls(data.spec, {name: members[name] for name in weights}, weights)
        single = {
            f"val_nrmse_member_{name}": headline_nrmse(truth, p) for name, p in predictions.items()
        }
        return model, FitReport(
            params={"weights": weights, "pool": sorted(members), "excluded": excluded},
            metrics=single,
        )

    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        members = {}
        for i, name in enumerate(MEMBER_POOL):
            if progress:
                progress(i, len(MEMBER_POOL), f"member {name}")
            member = family_class(name)(data.spec)
            member.fit(data, seed=seed)
            members[name] = member
        fitted, report = self.from_members(data, members)
        self.members, self.weights = fitted.members, fitted.weights
        if progress:
            progress(len(MEMBER_POOL), len(MEMBER_POOL), f"weights {self.weights}")
        return report

    def refit(
        self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int
    ) -> EnsembleForecaster:
        members = {name: m.refit(data, train_ends, seed=seed) for name, m in self.members.items()}
        return EnsembleForecaster(self.spec, members, self.weights)

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if not self.members:
            raise RuntimeError("ensemble has no members: fit or load it first")
        total = None
        for name, member in self.members.items():
            part = self.weights[name] * member.predict(times, values, ends)
            total = part if total is None else total + part
        return total

    def save(self, directory: Path) -> list[str]:
        files = []
        for name, member in self.members.items():
            sub = directory / f"member_{name}"
            sub.mkdir(parents=True, exist_ok=True)
            files += [f"member_{name}/{f}" for f in member.save(sub)]
        (directory / "ensemble.json").write_text(
            json.dumps({"weights": self.weights}, indent=2, sort_keys=True)
        )
        return [*files, "ensemble.json"]

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> EnsembleForecaster:
        weights = json.loads((directory / "ensemble.json").read_text())["weights"]
        members = {
            name: family_class(name).load(directory / f"member_{name}", spec) for name in weights
        }
        return cls(spec, members, weights)
