"""Where accepted training samples go: an in-process queue or a Kafka topic.

The training server's HTTP handler only *publishes* validated sample batches; the
streaming trainer *consumes* them. With Kafka, every training replica (and the
evaluator) reads the same topic, each replica in its own consumer group so each
sees every sample; in the embedded mode a bounded in-process queue stands in.

Every batch carries its publish time so a ``/flush`` can drop batches that were
published before it but not yet consumed, whichever transport is used.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson

from slocast.latency.schema import Columns

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 10.0


class StreamFull(Exception):
    """The transport cannot take more samples right now (HTTP 503, retry later)."""


@dataclass(frozen=True)
class SampleBatch:
    published_at: float  # time.time() at publish
    columns: Columns


class SampleStream(Protocol):
    def publish(self, columns: Columns) -> None: ...

    def poll(self, timeout: float) -> SampleBatch | None: ...

    def close(self) -> None: ...


class InProcessStream:
    """Queue between the HTTP handler and the trainer of one process, bounded in samples.

    Bounded by samples, not requests, so memory is bounded whatever the body sizes;
    a batch is refused whole (never split, never dropped) when it would exceed the
    bound, except into an empty queue, so any body the API accepts can get through.
    """

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError(f"the sample queue must hold at least one sample, got {max_samples}")
        self.max_samples = max_samples
        self._queue: queue.Queue[SampleBatch] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0

    def publish(self, columns: Columns) -> None:
        size = _batch_size(columns)
        with self._lock:
            if self._queued and self._queued + size > self.max_samples:
                raise StreamFull(
                    f"training queue is full ({self._queued} samples waiting); retry shortly"
                )
            self._queued += size
            self._queue.put_nowait(SampleBatch(time.time(), columns))

    def poll(self, timeout: float) -> SampleBatch | None:
        try:
            batch = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._queued -= _batch_size(batch.columns)
        return batch

    def close(self) -> None:
        """Nothing to release: the queue dies with the process."""


def _batch_size(columns: Columns) -> int:
    return len(next(iter(columns.values()))) if columns else 0


def encode_batch(columns: Columns, published_at: float) -> bytes:
    return orjson.dumps(
        {"published_at": published_at, "columns": columns}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def decode_batch(payload: bytes) -> SampleBatch:
    data = orjson.loads(payload)
    columns = {
        name: np.asarray(values, dtype=np.float64) for name, values in data["columns"].items()
    }
    return SampleBatch(float(data["published_at"]), columns)


# Partitions of the sample topic when this service creates it: batches carry no
# ordering requirement, and more than one partition lets brokers spread the load.
TOPIC_PARTITIONS = 6


def ensure_topic(bootstrap: str, topic: str) -> None:
    """Create ``topic`` unless it exists: a consumer subscribed to a missing topic
    would only notice its creation at the next metadata refresh (minutes)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics([NewTopic(topic, TOPIC_PARTITIONS)])[topic]
    try:
        future.result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


class KafkaStream:
    """Sample batches on a Kafka topic (one message per accepted HTTP request).

    ``group_id`` defaults to a fresh id per process so every replica consumes the
    whole stream (each keeps its own window); a fixed group would shard it.
    """

    def __init__(self, bootstrap: str, topic: str, group_id: str | None = None) -> None:
        from confluent_kafka import Consumer, Producer

        ensure_topic(bootstrap, topic)
        self.topic = topic
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id or f"slocast-latency-trainer-{uuid.uuid4().hex[:12]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            }
        )
        self._consumer.subscribe([topic])
        self.undecodable = 0  # messages that were not sample batches (skipped)

    def publish(self, columns: Columns) -> None:
        try:
            self._producer.produce(self.topic, encode_batch(columns, time.time()))
        except BufferError:
            raise StreamFull("Kafka producer queue is full; retry shortly") from None
        self._producer.poll(0)

    def poll(self, timeout: float) -> SampleBatch | None:
        message = self._consumer.poll(timeout)
        if message is None or message.error():
            return None
        try:
            return decode_batch(message.value())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not a sample batch
            log.error("skipping an undecodable message on %s: %r", self.topic, exc)
            self.undecodable += 1
            return None

    def flush(self, timeout: float) -> int:
        """Wait for delivery of produced messages; returns how many are still queued."""
        return self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.flush(5)
        # librdkafka's close (final commit, leaving the group) takes no timeout and was
        # seen to block forever when it raced a group join (a CI run hung here): bound
        # it, so stopping a trainer or a test never waits on the broker.
        closer = threading.Thread(
            target=self._consumer.close, name="kafka-consumer-close", daemon=True
        )
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning("Kafka consumer of %s did not close in %gs", self.topic, CLOSE_TIMEOUT_S)
