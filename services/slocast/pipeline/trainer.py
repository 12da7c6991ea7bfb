"""``slocast service trainer --family F``: dataset-ready -> MLflow run + version -> training events.

Idempotency key = SHA-256(dataset id, family, seed, code version), stored as a tag
on the run and the model version. Before training, the trainer looks the key up in
MLflow: a registered version means the work is done (it only republishes the
succeeded event, which may have been lost in a crash), so a redelivered or
resubmitted dataset is never trained twice.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from confluent_kafka import Message

from slocast.core.errors import DatasetError
from slocast.models import BASELINES
from slocast.pipeline.events import (
    DatasetReady,
    EventError,
    TrainingFailed,
    TrainingStarted,
    TrainingSucceeded,
    parse_event,
)
from slocast.pipeline.kafka.runner import ServiceContext, configure_logging
from slocast.pipeline.kafka.transport import PermanentError
from slocast.pipeline.mlflow_state import STALE_RUN_SECONDS, TAG_KEY, idempotency_key
from slocast.preprocess.store import dataset_prefix, has_dataset, load_dataset
from slocast.settings import TrainerSettings
from slocast.train.stage import TrainingError, train_family
from slocast.train.tracking import log_trained_model

log = logging.getLogger(__name__)


class TrainerHandler:
    def __init__(self, ctx: ServiceContext, settings: TrainerSettings) -> None:
        self.ctx = ctx
        self.family = settings.family
        self.seed = settings.seed
        self.topic = ctx.settings.topics.training

    def __call__(self, msg: Message) -> None:
        try:
            ready = parse_event(msg.value(), DatasetReady)
        except EventError as exc:
            raise PermanentError(str(exc)) from exc
        key = idempotency_key(ready.dataset_id, self.family, self.seed)
        common = {
            "producer": f"trainer-{self.family}",
            "task": ready.task,
            "dataset_id": ready.dataset_id,
            "family": self.family,
            "idempotency_key": key,
        }
        state = self.ctx.state
        done = state.version_for_key(ready.task, key)
        if done is not None:
            log.info(
                "%s on %s already trained (v%s)", self.family, ready.dataset_id[:12], done.version
            )
            self._publish(
                TrainingSucceeded(
                    **common,
                    run_id=done.run_id,
                    model_version=done.version,
                    model_uri=done.source,
                    train_seconds=0.0,
                    reused=True,
                )
            )
            self.ctx.metrics.trainings.labels(self.family, "reused").inc()
            return
        failed = state.failed_run_for_key(key)
        if failed is not None:
            self._publish(TrainingFailed(**common, run_id=failed[0], error=failed[1]))
            return
        # Kafka gave this key's message to us: an older RUNNING run with the same key is
        # a dead trainer's (killed mid-logging), not another live one's.
        self._close_stale(key=key, older_than_s=self.ctx.settings.session_timeout_ms / 1000)
        store = self.ctx.store
        if not has_dataset(store, ready.dataset_id):
            raise PermanentError(f"dataset {ready.dataset_id} is not in the store")
        where = store.uri(dataset_prefix(ready.dataset_id))
        if ready.dataset_uri != where:
            raise PermanentError(
                f"dataset_uri {ready.dataset_uri!r} is not where dataset "
                f"{ready.dataset_id[:12]} is stored ({where})"
            )
        try:
            dataset = load_dataset(store, ready.dataset_id, ready.metadata_sha256)
        except DatasetError as exc:
            raise PermanentError(str(exc)) from exc
        self._publish(TrainingStarted(**common))
        started = time.perf_counter()
        metrics = self.ctx.metrics
        try:
            model = train_family(dataset, self.family, seed=self.seed)
        except (TrainingError, ValueError) as exc:
            metrics.training_seconds.labels(self.family).observe(time.perf_counter() - started)
            metrics.trainings.labels(self.family, "failed").inc()
            # A model that cannot learn this data is a result, not a retryable error.
            error = f"{type(exc).__name__}: {exc}"
            run_id = state.log_failed_run(
                task=ready.task,
                family=self.family,
                dataset_id=ready.dataset_id,
                key=key,
                error=error,
            )
            self._publish(TrainingFailed(**common, run_id=run_id, error=error))
            return
        metrics.training_seconds.labels(self.family).observe(time.perf_counter() - started)
        with tempfile.TemporaryDirectory(prefix=f"slocast-{self.family}-") as scratch:
            ref = log_trained_model(
                self.ctx.registry,
                model,
                dataset=dataset,
                task=ready.task,
                role="baseline" if self.family in BASELINES else "candidate",
                bundle_dir=Path(scratch) / self.family,
                extra_tags={TAG_KEY: key, **state.tags},
            )
        self._publish(
            TrainingSucceeded(
                **common,
                run_id=ref.run_id,
                model_version=ref.version,
                model_uri=ref.source,
                val_nrmse=model.val_metrics.get("val_nrmse_avg"),
                train_seconds=time.perf_counter() - started,
            )
        )
        metrics.trainings.labels(self.family, "succeeded").inc()
        log.info("%s on %s trained: v%s", self.family, ready.dataset_id[:12], ref.version)

    def close_stale_runs(self) -> None:
        """At start-up and then periodically: this family's runs left RUNNING by trainers
        that died longer ago than any live consumer could still own them."""
        self._close_stale(key=None, older_than_s=STALE_RUN_SECONDS)

    def _close_stale(self, *, key: str | None, older_than_s: float) -> None:
        closed = self.ctx.state.close_stale_runs(self.family, older_than_s=older_than_s, key=key)
        if closed:
            log.warning(
                "closed %d stale RUNNING %s run(s) as KILLED: %s", len(closed), self.family, closed
            )

    def _publish(self, event) -> None:
        self.ctx.producer.publish(self.topic, event, key=event.dataset_id)


def run(settings: TrainerSettings) -> int:
    service = f"trainer-{settings.family}"
    configure_logging(service, settings.common.log_level)
    ctx = ServiceContext(service, settings.common).start()
    handler = TrainerHandler(ctx, settings)
    ctx.consume(
        service,
        [settings.common.topics.dataset_ready],
        handler,
        on_idle=handler.close_stale_runs,  # at once after start-up, then every 10 min
        idle_interval_s=600,
    )
    return 0
