"""Services of two namespaces sharing one MLflow never see each other's datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from slocast.adapters.registry import ModelRegistry
from slocast.pipeline.mlflow_state import TAG_PUBLISHED, RegistryState

TASK = "cell"
DATASET = "d" * 64


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root: Path = tmp_path_factory.mktemp("mlflow")
    return ModelRegistry(
        f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri()
    )


def test_scans_and_decisions_stay_in_their_namespace(registry: ModelRegistry) -> None:
    mine, theirs = RegistryState(registry, "a"), RegistryState(registry, "b")
    theirs.log_failed_run(task=TASK, family="xgboost", dataset_id=DATASET, key="k" * 64, error="x")
    theirs.record_decision(TASK, DATASET, {TAG_PUBLISHED: "false"}, {"decision": "theirs"})

    # B sees its own work ...
    assert theirs.datasets_with_results(3600) == [(TASK, DATASET)]
    assert theirs.failed_families(TASK, DATASET) == {"xgboost": "x"}
    assert theirs.decision(TASK, DATASET) is not None
    assert [r.tags["slocast.namespace"] for r in theirs.unpublished_decisions()] == ["b"]
    assert theirs.failed_run_for_key("k" * 64) is not None
    # ... and A, scanning the same MLflow on its timer, finds nothing to decide or announce.
    assert mine.datasets_with_results(3600) == []
    assert mine.failed_families(TASK, DATASET) == {}
    assert mine.first_result_ms(TASK, DATASET) is None
    assert mine.decision(TASK, DATASET) is None
    assert mine.unpublished_decisions() == []
    assert mine.failed_run_for_key("k" * 64) is None
    assert mine.dataset_versions(TASK, DATASET) == {}
