"""Weighted averages of other families, their weights chosen on validation.

``ensemble``: one weight per member (below). ``blend``: one weight per member and
target, fitted by least squares on validation (:class:`BlendForecaster`).

Ensemble weights come from greedy forward selection with replacement (Caruana et al.,
2004): start from the best single member on the validation split, then for
``MAX_ROUNDS`` rounds add the member whose inclusion most lowers the validation
headline NRMSE (even when nothing lowers it), and keep the ensemble of the best
round. A member that hurts at an equal share can help at a smaller one, which
only the later rounds (adding the leader again) reach; stopping at the first
round without a gain left the ensemble equal to its best member. Members that
are never picked get weight 0 and are not stored. Averaging models whose errors
are not perfectly correlated lowers the variance of the forecast, and selection
on validation keeps a weak member from diluting a strong one. The test split is
never consulted.
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

COMBINERS: tuple[str, ...] = ("ensemble", "blend")
MEMBER_POOL: tuple[str, ...] = tuple(f for f in CANDIDATES if f not in COMBINERS)
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
    """Greedy forward selection with replacement, the best round's ensemble; returns
    weights summing to 1."""
    if not predictions:
        raise ValueError("an ensemble needs at least one member")
    counts = dict.fromkeys(predictions, 0)
    total = np.zeros_like(next(iter(predictions.values())))
    best, best_counts = np.inf, counts
    for rounds in range(1, MAX_ROUNDS + 1):
        trial = {
            name: headline_nrmse(truth, (total + p) / rounds) for name, p in predictions.items()
        }
        name = min(trial, key=trial.get)
        counts = {**counts, name: counts[name] + 1}
        total = total + predictions[name]
        if trial[name] < best - 1e-9:  # a later round must gain to replace an earlier one
            best, best_counts = trial[name], counts
    used = sum(best_counts.values())
    return {name: count / used for name, count in best_counts.items() if count}


def blend_weights(
    predictions: Mapping[str, np.ndarray], truth: np.ndarray
) -> dict[str, np.ndarray]:
    """Per target, the non-negative weights summing to 1 of least squared error.

    Fitted on standardised errors pooled over horizon steps (rows with missing truth
    left out). Returns, per member, a weight vector over targets; members with weight
    0 on every target are dropped.
    """
    if not predictions:
        raise ValueError("a blend needs at least one member")
    names = list(predictions)
    stacked = np.stack([np.asarray(predictions[n], np.float64) for n in names], axis=-1)
    y = np.asarray(truth, np.float64)
    weights = np.zeros((len(names), y.shape[-1]))
    for k in range(y.shape[-1]):
        a = stacked[..., k, :].reshape(-1, len(names))
        b = y[..., k].reshape(-1)
        rows = np.isfinite(b) & np.isfinite(a).all(axis=1)
        a, b = a[rows], b[rows]
        spread = max(float(np.std(b)), 1e-12)
        weights[:, k] = _simplex_least_squares(a / spread, b / spread)
    return {n: weights[i] for i, n in enumerate(names) if weights[i].any()}


def _simplex_least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a w - b|| with w >= 0 and sum(w) = 1 (NNLS with a heavy sum row)."""
    from scipy.optimize import nnls

    penalty = 1e3 * np.sqrt(len(b))
    w, _ = nnls(np.vstack([a, np.full((1, a.shape[1]), penalty)]), np.append(b, penalty))
    w = np.where(w < 1e-6, 0.0, w)
    return w / w.sum()


class EnsembleForecaster(Forecaster):
    family = "ensemble"
    pool: tuple[str, ...] = MEMBER_POOL

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
        weights = cls.choose_weights(usable, truth)
        model = cls(data.spec, {name: members[name] for name in weights}, weights)
        single = {
            f"val_nrmse_member_{name}": headline_nrmse(truth, p) for name, p in predictions.items()
        }
        return model, FitReport(
            params={
                "weights": _jsonable(weights),
                "pool": sorted(members),
                "excluded": excluded,
            },
            metrics=single,
        )

    @staticmethod
    def choose_weights(
        predictions: Mapping[str, np.ndarray], truth: np.ndarray
    ) -> dict[str, float | np.ndarray]:
        return select_weights(predictions, truth)

    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        members = {}
        pool = self.pool
        for i, name in enumerate(pool):
            if progress:
                progress(i, len(pool), f"member {name}")
            member = family_class(name)(data.spec)
            member.fit(data, seed=seed)
            members[name] = member
        fitted, report = self.from_members(data, members)
        self.members, self.weights = fitted.members, fitted.weights
        if progress:
            progress(len(pool), len(pool), f"weights {_jsonable(self.weights)}")
        return report

    def refit(
        self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int
    ) -> EnsembleForecaster:
        members = {name: m.refit(data, train_ends, seed=seed) for name, m in self.members.items()}
        return type(self)(self.spec, members, self.weights)

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if not self.members:
            raise RuntimeError("ensemble has no members: fit or load it first")
        total = None
        for name, member in self.members.items():
            part = np.asarray(self.weights[name]) * member.predict(times, values, ends)
            total = part if total is None else total + part
        return total

    def save(self, directory: Path) -> list[str]:
        files = []
        for name, member in self.members.items():
            sub = directory / f"member_{name}"
            sub.mkdir(parents=True, exist_ok=True)
            files += [f"member_{name}/{f}" for f in member.save(sub)]
        (directory / "ensemble.json").write_text(
            json.dumps({"weights": _jsonable(self.weights)}, indent=2, sort_keys=True)
        )
        return [*files, "ensemble.json"]

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> EnsembleForecaster:
        weights = {
            name: np.asarray(w, np.float64) if isinstance(w, list) else float(w)
            for name, w in json.loads((directory / "ensemble.json").read_text())["weights"].items()
        }
        members = {
            name: family_class(name).load(directory / f"member_{name}", spec) for name in weights
        }
        return cls(spec, members, weights)


class BlendForecaster(EnsembleForecaster):
    """Per-target weights over the guard-passing members and persistence.

    Each target gets its own convex combination (:func:`blend_weights`, least squares
    on validation), so a family that is best for ``up`` but not for ``rnti_count``
    weighs in only where it helps; persistence is a member, so a blend can shrink
    towards the last observation where the models over-react. The test split is
    never consulted.
    """

    family = "blend"
    pool = (*MEMBER_POOL, "persistence")

    @staticmethod
    def choose_weights(
        predictions: Mapping[str, np.ndarray], truth: np.ndarray
    ) -> dict[str, float | np.ndarray]:
        return blend_weights(predictions, truth)


def _jsonable(weights: Mapping[str, float | np.ndarray]) -> dict[str, float | list[float]]:
    return {name: np.asarray(w).tolist() if np.ndim(w) else float(w) for name, w in weights.items()}
