"""Services starting together race to create the MLflow experiment; none fails."""

from __future__ import annotations

from mlflow import MlflowClient

from slocast.adapters.registry import ModelRegistry


def test_the_loser_of_the_experiment_creation_race_uses_the_winners(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = ModelRegistry(uri)
    real = MlflowClient.get_experiment_by_name
    calls = []

    def not_yet_seen(self, name):
        # The second service looked before the first created it.
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet_seen)
    second = ModelRegistry(uri)
    assert second.experiment_id == first.experiment_id
    assert len(calls) == 2
