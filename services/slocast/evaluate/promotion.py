"""The promotion rule, as a pure function of test metrics.

A candidate is eligible when its headline NRMSE beats persistence on the same
test windows. The best eligible candidate wins, unless a champion already serves
the task and the candidate does not beat it by ``margin`` (relative) on the same
windows: then the champion stays. Baselines are never promoted by this rule, nor
is a candidate the persistence guard excluded on validation (``excluded``;
:mod:`slocast.models.guard`), whatever its test score.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

DEFAULT_MARGIN = 0.01


@dataclass(frozen=True)
class Decision:
    decision_id: str
    task: str
    dataset_id: str
    winner: str | None
    promoted: bool
    reason: str
    ranking: list[tuple[str, float]]
    reference: dict[str, float]
    margin: float
    excluded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    *,
    task: str,
    dataset_id: str,
    candidates: dict[str, float],
    persistence: float,
    champion: tuple[str, float] | None = None,
    margin: float = DEFAULT_MARGIN,
    excluded: dict[str, str] | None = None,
) -> Decision:
    """Pick the model to serve.

    Args:
        candidates: name -> headline test NRMSE for the models trained in this run.
        persistence: headline test NRMSE of persistence on the same windows.
        champion: (label, headline test NRMSE on the same windows) of the serving model.
        excluded: candidate -> why the persistence guard excluded it; never eligible.
    """
    excluded = {name: reason for name, reason in (excluded or {}).items() if name in candidates}
    ranking = sorted(candidates.items(), key=lambda item: item[1])
    reference = {"persistence": persistence}
    if champion is not None:
        reference[f"champion:{champion[0]}"] = champion[1]
    eligible = [
        (name, value) for name, value in ranking if value < persistence and name not in excluded
    ]
    if not eligible:
        winner, promoted = None, False
        reason = f"no candidate beat persistence (NRMSE {persistence:.4f})"
        if excluded:
            reason = f"no eligible candidate beat persistence (NRMSE {persistence:.4f})"
    else:
        name, value = eligible[0]
        if champion is not None and value >= champion[1] * (1.0 - margin):
            winner, promoted = None, False
            reason = (
                f"best candidate {name} (NRMSE {value:.4f}) does not beat champion {champion[0]} "
                f"(NRMSE {champion[1]:.4f}) by {margin:.0%}; champion kept"
            )
        else:
            winner, promoted = name, True
            reason = (
                f"{name} has the best NRMSE ({value:.4f}) and beats persistence ({persistence:.4f})"
            )
            if champion is not None:
                reason += f" and champion {champion[0]} ({champion[1]:.4f}) by >= {margin:.0%}"
    if excluded:
        reason += "; excluded by the persistence guard: " + ", ".join(sorted(excluded))
    payload = {
        "task": task,
        "dataset_id": dataset_id,
        "winner": winner,
        "ranking": ranking,
        "reference": reference,
    }
    if excluded:  # decisions without exclusions keep the ids they always had
        payload["excluded"] = sorted(excluded)
    decision_id = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return Decision(
        decision_id,
        task,
        dataset_id,
        winner,
        promoted,
        reason,
        ranking,
        reference,
        margin,
        excluded,
    )
