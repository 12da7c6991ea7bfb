"""``slocast service preprocess``: dataset-submitted -> processed dataset -> dataset-ready.

Idempotent by construction: the processed dataset is stored under its content hash
and written once; a redelivered submission republishes the same dataset-ready event
(trainers deduplicate by idempotency key).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from confluent_kafka import Message

from slocast.adapters.datasets import load_lte
from slocast.core.config import PipelineConfig
from slocast.core.digests import sha256_bytes
from slocast.core.errors import ConfigError, DatasetError
from slocast.pipeline.claims import fetch_verified, key_for_uri
from slocast.pipeline.events import (
    DatasetReady,
    DatasetSubmitted,
    EventError,
    parse_event,
)
from slocast.pipeline.kafka.runner import ServiceContext, configure_logging
from slocast.pipeline.kafka.transport import PermanentError
from slocast.preprocess.stage import min_rows, preprocess
from slocast.preprocess.store import dataset_prefix, has_dataset, save_dataset
from slocast.settings import CommonSettings

log = logging.getLogger(__name__)
SERVICE = "preprocess"


class PreprocessHandler:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def __call__(self, msg: Message) -> None:
        try:
            event = parse_event(msg.value(), DatasetSubmitted)
            config = PipelineConfig.from_dict(event.config)
        except (EventError, ConfigError, TypeError) as exc:
            raise PermanentError(str(exc)) from exc
        store = self.ctx.store
        with tempfile.TemporaryDirectory(prefix="slocast-preprocess-") as scratch:
            try:
                train = _load_claimed(
                    store,
                    event.train_uri,
                    event.train_sha256,
                    scratch,
                    min_rows=min_rows(config),
                    config=config,
                )
                test = None
                if event.test_uri:
                    if not event.test_sha256:
                        raise PermanentError("test_uri given without test_sha256")
                    test = _load_claimed(
                        store,
                        event.test_uri,
                        event.test_sha256,
                        scratch,
                        min_rows=config.window + config.horizon,
                        config=config,
                    )
                dataset = preprocess(
                    train, test, config, sources={"train": event.train_uri, "test": event.test_uri}
                )
            except DatasetError as exc:
                raise PermanentError(str(exc)) from exc
        if has_dataset(store, dataset.dataset_id):
            log.info("dataset %s already stored", dataset.dataset_id[:12])
        else:
            save_dataset(store, dataset)
        prefix = dataset_prefix(dataset.dataset_id)
        summary = dataset.summary()
        ready = DatasetReady(
            producer=SERVICE,
            task=event.task,
            dataset_id=dataset.dataset_id,
            dataset_uri=store.uri(prefix),
            metadata_sha256=sha256_bytes(store.get_bytes(f"{prefix}/metadata.json")),
            train_windows=int(summary["train_windows"]),
            test_windows=int(summary["test_windows"]),
        )
        self.ctx.producer.publish(
            self.ctx.settings.topics.dataset_ready, ready, key=dataset.dataset_id
        )
        log.info("dataset %s ready (task %s)", dataset.dataset_id[:12], event.task)


def _load_claimed(
    store,
    uri: str,
    sha256: str,
    scratch: str,
    *,
    min_rows: int,
    config: PipelineConfig,
):
    """Load and validate a claimed file. Its errors name the claim-check URI the event
    carried: the scratch copy they would otherwise name is deleted by the time anyone
    reads the dead letter."""
    path = _local_copy(store, uri, sha256, scratch)
    try:
        return load_lte(path, min_rows=min_rows, config=config)
    except DatasetError as exc:
        reason = str(exc).replace(str(path), uri).replace(scratch, "<scratch>")
        if uri not in reason:
            reason = f"{uri}: {reason}"
        raise PermanentError(reason) from None


def _local_copy(store, uri: str, sha256: str, scratch: str) -> Path:
    """Readers need a file with the right suffix (CSV or Parquet)."""
    data = fetch_verified(store, uri, sha256)
    path = Path(scratch) / Path(key_for_uri(store, uri)).name
    path.write_bytes(data)
    return path


def run(settings: CommonSettings) -> int:
    configure_logging(SERVICE, settings.log_level)
    ctx = ServiceContext(SERVICE, settings, needs_mlflow=False).start()
    ctx.consume(SERVICE, [settings.topics.dataset_submitted], PreprocessHandler(ctx))
    return 0
