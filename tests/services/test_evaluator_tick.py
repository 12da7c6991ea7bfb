"""The evaluator's deadline tick: one dataset that cannot be decided holds up no other."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slocast.pipeline.evaluator import DurableEvaluator
from slocast.pipeline.events import TrainingSucceeded


class State:
    """The MLflow-backed state's answers for two datasets that wait for a decision."""

    def __init__(self, datasets: list[tuple[str, str]]) -> None:
        self.datasets = datasets

    def unpublished_decisions(self) -> list:
        return []

    def datasets_with_results(self, window: float) -> list[tuple[str, str]]:
        return self.datasets

    def decision(self, task: str, dataset_id: str) -> None:
        return None


class Store:
    def exists(self, key: str) -> bool:
        return True


def test_a_dataset_that_cannot_be_decided_is_skipped_and_the_others_are_decided(
    monkeypatch, caplog
) -> None:
    broken, fine = ("cell", "a" * 64), ("cell", "b" * 64)
    ctx = SimpleNamespace(state=State([broken, fine]), store=Store())
    evaluator = DurableEvaluator(ctx, SimpleNamespace(deadline_seconds=60.0))
    considered = []

    def consider(task: str, dataset_id: str, *, manual: bool = False) -> None:
        considered.append((task, dataset_id))
        if (task, dataset_id) == broken:
            raise IndexError("a config nobody checked")

    monkeypatch.setattr(evaluator, "consider", consider)
    evaluator.tick()
    assert considered == [broken, fine]
    assert "cannot decide dataset aaaaaaaaaaaa of task cell" in caplog.text
    evaluator.tick()  # not re-scored on every tick
    assert considered == [broken, fine, fine]
    # A new training event for it tries again.
    event = TrainingSucceeded(
        task="cell",
        dataset_id=broken[1],
        family="xgboost",
        idempotency_key="c" * 64,
        run_id="r",
        model_version="1",
        model_uri="models:/x/1",
        train_seconds=1.0,
    )
    with pytest.raises(IndexError):
        evaluator.handle(SimpleNamespace(value=event.to_bytes))
    evaluator.tick()
    assert considered[-2:] == [broken, fine]


def test_an_outage_during_the_tick_is_raised_not_skipped(monkeypatch) -> None:
    """Outages mark the service not ready (the consumer's guard): never skipped."""
    ctx = SimpleNamespace(state=State([("cell", "a" * 64)]), store=Store())
    evaluator = DurableEvaluator(ctx, SimpleNamespace(deadline_seconds=60.0))

    def consider(task: str, dataset_id: str, *, manual: bool = False) -> None:
        raise ConnectionRefusedError("mlflow is down")

    monkeypatch.setattr(evaluator, "consider", consider)
    with pytest.raises(ConnectionRefusedError):
        evaluator.tick()
    with pytest.raises(ConnectionRefusedError):
        evaluator.tick()
