"""``slocast submit`` and ``slocast promote``: the two commands a user drives the services with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from slocast.adapters.datasets import load_lte
from slocast.adapters.registry import check_task, task_from_file
from slocast.adapters.storage import open_store
from slocast.core.config import PipelineConfig
from slocast.core.errors import ConfigError, SlocastError
from slocast.pipeline.claims import upload_file
from slocast.pipeline.events import DatasetSubmitted
from slocast.pipeline.kafka.transport import EventProducer, base_config, ensure_topics
from slocast.pipeline.mlflow_state import DecisionRecord
from slocast.preprocess.stage import min_rows, preprocess
from slocast.settings import CommonSettings


@dataclass(frozen=True)
class Submission:
    task: str
    dataset_id: str
    event: DatasetSubmitted


def submit_dataset(
    settings: CommonSettings,
    data: Path,
    test_data: Path | None = None,
    *,
    task: str | None = None,
    window: int = 10,
    horizon: int = 1,
    max_gap_rows: int = 0,
) -> Submission:
    """Validate locally (fail fast, and learn the dataset id), upload, publish.

    The preprocess stage runs here in full before anything is uploaded, so every
    refusal the preprocess service would send to the DLQ (a test file on another
    step or not after training, too few test windows, a headline column without
    traffic) is a local error instead of a dataset the service refuses for good.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    task = check_task(task) if task else task_from_file(data)
    config = PipelineConfig(window=window, horizon=horizon, max_gap_rows=max_gap_rows)
    train = load_lte(
        data,
        min_rows=min_rows(config),
        config=config,
    )
    test = None
    if test_data is not None:
        test = load_lte(
            test_data,
            min_rows=config.window + config.horizon,
            config=config,
        )
    sources = {"train": str(data), "test": str(test_data) if test_data else None}
    expected_id = preprocess(train, test, config, sources=sources).dataset_id
    # The broker first: without it nothing is uploaded (an upload no event names
    # would only take space).
    try:
        ensure_topics(
            AdminClient(base_config(settings.kafka_bootstrap)),
            settings.topics.all(),
            settings.topic_partitions,
        )
    except KafkaException as exc:
        raise SlocastError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} (SLOCAST_KAFKA_BOOTSTRAP): "
            f"{exc.args[0] if exc.args else exc}; nothing was uploaded (is `slocast up` running?)"
        ) from None
    store = open_store(settings.store_uri, endpoint_url=settings.s3_endpoint_url)
    train_uri, train_sha = upload_file(store, data)
    test_uri, test_sha = upload_file(store, test_data) if test_data else (None, None)
    event = DatasetSubmitted(
        producer="submit",
        task=task,
        train_uri=train_uri,
        train_sha256=train_sha,
        test_uri=test_uri,
        test_sha256=test_sha,
        config=config.to_dict(),
    )
    producer = EventProducer(settings.kafka_bootstrap)
    try:
        producer.publish(settings.topics.dataset_submitted, event, key=train_sha)
    except KafkaException as exc:
        raise SlocastError(
            f"uploaded {train_uri} but could not publish its event to Kafka at "
            f"{settings.kafka_bootstrap}: {exc.args[0] if exc.args else exc}; run the same "
            "`slocast submit` again (the upload is content-addressed, nothing is duplicated)"
        ) from None
    finally:
        producer.close()
    return Submission(event.task, expected_id, event)


def promote_by_hand(dataset: str, task: str | None = None) -> DecisionRecord | None:
    """Run the durable evaluator's decision for one dataset now (deadline ignored)."""
    from slocast.adapters.registry import TAG_DATASET, TAG_TASK
    from slocast.pipeline.evaluator import DurableEvaluator
    from slocast.pipeline.kafka.runner import ServiceContext, configure_logging
    from slocast.settings import EvaluatorSettings

    if not re.fullmatch(r"[0-9a-f]{64}", dataset):
        raise ConfigError(
            f"--dataset {dataset!r} is not a dataset id (64 lowercase hex digits, as "
            "`slocast submit` prints)"
        )
    if task is not None:
        check_task(task)
    settings = EvaluatorSettings.from_env()
    configure_logging("promote", settings.common.log_level)
    ctx = ServiceContext("promote", settings.common)
    try:
        if not ctx.readiness.run_checks():
            raise SlocastError(f"dependencies not ready: {ctx.readiness.report()['checks']}")
        if task is None:
            runs = ctx.state.runs(f"tags.`{TAG_DATASET}` = '{dataset}'")
            tasks = sorted({r.data.tags.get(TAG_TASK, "") for r in runs} - {""})
            if len(tasks) != 1:
                raise SlocastError(
                    f"dataset {dataset[:12]} has runs for tasks {tasks or 'none'}; pass --task"
                )
            task = tasks[0]
        return DurableEvaluator(ctx, settings).replay(task, dataset)
    finally:
        ctx.close()
