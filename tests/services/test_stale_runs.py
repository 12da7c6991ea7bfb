"""A trainer killed while logging leaves a RUNNING run; a later trainer closes it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from slocast.adapters.registry import TAG_FAMILY, TAG_ROLE, TAG_TASK, ModelRegistry
from slocast.adapters.storage import LocalStore
from slocast.pipeline.events import DatasetReady
from slocast.pipeline.kafka.transport import PermanentError
from slocast.pipeline.mlflow_state import TAG_KEY, TAG_NAMESPACE, RegistryState, idempotency_key
from slocast.pipeline.trainer import TrainerHandler
from slocast.settings import CommonSettings, TrainerSettings

TASK = "cell"
DATASET = "d" * 64
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root: Path = tmp_path_factory.mktemp("mlflow")
    return ModelRegistry(f"sqlite:///{root / 'mlflow.db'}")


def running(registry: ModelRegistry, *, namespace: str, family: str, key: str, age_ms: int) -> str:
    """A run as a trainer killed mid-logging leaves it: started, never terminated."""
    run = registry.client.create_run(
        registry.experiment_id,
        start_time=int(time.time() * 1000) - age_ms,
        tags={
            TAG_TASK: TASK,
            TAG_FAMILY: family,
            TAG_ROLE: "candidate",
            TAG_KEY: key,
            TAG_NAMESPACE: namespace,
        },
    )
    return run.info.run_id


def status(registry: ModelRegistry, run_id: str) -> str:
    return registry.client.get_run(run_id).info.status


def test_start_up_sweep_closes_only_its_own_old_runs(registry: ModelRegistry) -> None:
    state = RegistryState(registry, "sweep")
    stale = running(registry, namespace="sweep", family="xgboost", key="a" * 64, age_ms=2 * HOUR_MS)
    recent = running(registry, namespace="sweep", family="xgboost", key="b" * 64, age_ms=1000)
    other_family = running(
        registry, namespace="sweep", family="gru", key="c" * 64, age_ms=2 * HOUR_MS
    )
    other_ns = running(
        registry, namespace="other", family="xgboost", key="a" * 64, age_ms=2 * HOUR_MS
    )

    assert state.close_stale_runs("xgboost", older_than_s=3600) == [stale]
    assert status(registry, stale) == "KILLED"
    assert "stale" in registry.client.get_run(stale).data.tags["slocast.error"]
    for untouched in (recent, other_family, other_ns):
        assert status(registry, untouched) == "RUNNING"
    assert state.close_stale_runs("xgboost", older_than_s=3600) == []  # idempotent


def test_retraining_a_key_closes_the_dead_trainers_run(registry: ModelRegistry, tmp_path) -> None:
    """Kafka redelivered the key's message to this trainer: the earlier RUNNING run of
    that key (older than a session timeout) is a dead trainer's and is closed first."""
    family = "persistence"
    key = idempotency_key(DATASET, family, 0)
    dead = running(registry, namespace="retrain", family=family, key=key, age_ms=60_000)
    other_key = running(registry, namespace="retrain", family=family, key="e" * 64, age_ms=60_000)
    common = CommonSettings.from_env(
        {
            "SLOCAST_HOME": str(tmp_path),
            "SLOCAST_KAFKA_BOOTSTRAP": "127.0.0.1:9",
            "SLOCAST_NAMESPACE": "retrain",
            "SLOCAST_TOPIC_PARTITIONS": "1",
            "SLOCAST_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SLOCAST_HEALTH_PORT": "0",
            "SLOCAST_HEALTH_HOST": "127.0.0.1",
            "SLOCAST_MAX_ATTEMPTS": "2",
            "SLOCAST_RETRY_BACKOFF_SECONDS": "0.1",
        }
    )
    ctx = SimpleNamespace(
        settings=common, state=RegistryState(registry, "retrain"), store=LocalStore(tmp_path / "s")
    )
    handler = TrainerHandler(ctx, TrainerSettings(common, family, 0))
    event = DatasetReady(
        producer="preprocess",
        task=TASK,
        dataset_id=DATASET,
        dataset_uri="file:///nowhere",
        metadata_sha256="f" * 64,
        train_windows=10,
        test_windows=5,
    )
    message = SimpleNamespace(value=event.to_bytes)
    with pytest.raises(PermanentError, match="not in the store"):  # stops before training
        handler(message)
    assert status(registry, dead) == "KILLED"
    assert status(registry, other_key) == "RUNNING"
