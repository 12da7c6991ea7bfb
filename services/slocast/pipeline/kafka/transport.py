"""confluent-kafka wrappers with the delivery rules every slocast service follows.

* Offsets are committed by hand, only after the handler returned: its effects
  (object written, MLflow run logged, next event acknowledged by the broker) are
  durable before the broker forgets the message. A crash means redelivery, so
  handlers are idempotent.
* :class:`DependencyUnavailable` (MLflow/S3/broker down): the message is retried
  without limit and the service reports not-ready; it is never dead-lettered.
* :class:`PermanentError` (malformed event, invalid data): straight to the DLQ.
* Anything else: retried with exponential backoff, then sent to ``<topic>.dlq``
  with the error in headers and the original bytes as payload. If even the DLQ
  write fails, the offset is not committed: no message is ever dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from slocast.pipeline.events import DLQ_SUFFIX, Event
from slocast.pipeline.health import Readiness
from slocast.pipeline.logthrottle import OUTAGES, rdkafka_logger
from slocast.pipeline.metrics import LAG_REFRESH_SECONDS, PipelineMetrics, consumer_lag

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0
# The largest key and value copied whole to a dead-letter topic. A producer refuses
# a message over its `message.max.bytes` (1 MB by default) for good, so a larger
# poison message copied whole could never be dead-lettered, and its consumer would
# retry it forever; the copy is cut here and headers say so (the original stays in
# its topic at the offset the headers name).
DLQ_MAX_VALUE_BYTES = 512 * 1024
DLQ_MAX_KEY_BYTES = 4 * 1024


class PermanentError(Exception):
    """The message can never be processed; retrying is pointless."""


class DependencyUnavailable(Exception):
    """A dependency is down; the message must wait, not be dead-lettered."""


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause chain) is a connection failure to a dependency.

    MLflow wraps connection errors in ``MlflowException`` with the requests message,
    so the text is checked as well as the types.
    """
    markers = ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out")
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, DependencyUnavailable | ConnectionError | TimeoutError):
            return True
        name = type(current).__name__
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
            return True
        if any(m in str(current) for m in markers):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def base_config(bootstrap: str) -> dict:
    """Every client's settings. librdkafka's own log lines go through Python logging,
    throttled (:mod:`slocast.pipeline.logthrottle`), instead of straight to stderr; the
    client must be polled for them to be emitted (:meth:`EventProducer.poll`,
    ``AdminClient.poll`` in the broker check, the consumer loop)."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": f"slocast-{socket.gethostname()}",
        "logger": rdkafka_logger(),
        # Reconnect less eagerly while the broker is down (defaults 100 ms .. 10 s).
        "reconnect.backoff.ms": 500,
        "reconnect.backoff.max.ms": 5000,
    }


def ensure_topics(admin: AdminClient, topics: list[str], partitions: int) -> None:
    """Create missing topics and their dead-letter topics (existing ones are left alone)."""
    wanted = [t for name in topics for t in (name, name + DLQ_SUFFIX)]
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [NewTopic(t, partitions, 1) for t in wanted if t not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator
                raise
        log.info("created topic %s", topic)


class EventProducer:
    """Synchronous publishing: :meth:`publish` returns once the broker acknowledged."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._producer = Producer(
            {
                **base_config(bootstrap),
                "enable.idempotence": True,  # broker-side dedupe of producer retries
                "acks": "all",
                "linger.ms": 2,
                "message.timeout.ms": int(timeout_s * 1000),
            }
        )

    def publish(self, topic: str, event: Event, *, key: str) -> None:
        self.publish_raw(topic, key.encode(), event.to_bytes())

    def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        outcome: list[KafkaError | None] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            outcome.append(err)

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=headers, on_delivery=delivered
            )
        except BufferError as exc:
            raise DependencyUnavailable(f"producer queue full: {exc}") from exc
        deadline = time.monotonic() + self.timeout_s + 5
        while not outcome and time.monotonic() < deadline:
            self._producer.poll(0.1)
        if not outcome:
            raise DependencyUnavailable(f"no delivery report for {topic} within {self.timeout_s}s")
        if outcome[0] is not None:
            raise DependencyUnavailable(f"publishing to {topic} failed: {outcome[0]}")

    def poll(self) -> None:
        """Serve pending callbacks and librdkafka log lines (they queue until polled)."""
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(10)


Handler = Callable[[Message], None]


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    backoff_s: float = 0.5

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * (2 ** max(attempt - 1, 0)), MAX_BACKOFF)


class ServiceConsumer:
    """Poll -> handle (with retries / DLQ) -> commit, one message at a time."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group: str,
        topics: list[str],
        handler: Handler,
        producer: EventProducer,
        readiness: Readiness,
        service: str,
        retry: RetryPolicy,
        session_timeout_ms: int = 6000,
        on_idle: Callable[[], None] | None = None,
        idle_interval_s: float = 5.0,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.group = group
        self.topics = topics
        self.handler = handler
        self.producer = producer
        self.readiness = readiness
        self.service = service
        self.retry = retry
        self.on_idle = on_idle
        self.idle_interval_s = idle_interval_s
        self.metrics = metrics
        if metrics is not None:
            metrics.init_topics(topics)
        self._outcome = "handled"
        self._last_lag = float("-inf")
        self.config = {
            **base_config(bootstrap),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(session_timeout_ms // 4, 100),
            # Training can take many minutes; the handler runs between polls.
            "max.poll.interval.ms": 3_600_000,
        }

    def run(self, stop: threading.Event) -> None:
        if not self.readiness.wait_ready(stop):
            return
        consumer = Consumer(self.config)
        consumer.subscribe(self.topics)
        log.info("%s consuming %s as group %s", self.service, self.topics, self.group)
        last_idle = float(
            "-inf"
        )  # the first idle task runs at once: state is re-derived at start-up
        try:
            while not stop.is_set():
                if self.on_idle and time.monotonic() - last_idle >= self.idle_interval_s:
                    self._guarded(self.on_idle, stop)
                    last_idle = time.monotonic()
                self._refresh_lag(consumer)
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    # Broker restarts show up here as transport errors; librdkafka reconnects.
                    OUTAGES.log(log, logging.WARNING, "consumer error: %s", msg.error())
                    continue
                started = time.monotonic()
                if not self._process(msg, stop):
                    return  # stopping mid-message: leave it uncommitted for redelivery
                self._commit(consumer, msg)
                if self.metrics is not None:
                    self.metrics.count_message(
                        msg.topic(), self._outcome, time.monotonic() - started
                    )
        finally:
            consumer.close()

    def _refresh_lag(self, consumer: Consumer) -> None:
        """Export the group's lag, at most every LAG_REFRESH_SECONDS (broker round trips)."""
        if self.metrics is None:
            return
        if time.monotonic() - self._last_lag < LAG_REFRESH_SECONDS:
            return
        self._last_lag = time.monotonic()
        try:
            self.metrics.set_lag(consumer_lag(consumer))
        except KafkaException as exc:  # the broker may be restarting: keep the last values
            log.debug("cannot read consumer lag: %s", exc)

    def _process(self, msg: Message, stop: threading.Event) -> bool:
        self._outcome = "handled"
        attempt = 0
        while not stop.is_set():
            try:
                self.handler(msg)
                return True
            except PermanentError as exc:
                return self._dead_letter(msg, exc, attempt + 1, stop)
            except Exception as exc:
                if is_outage(exc):
                    OUTAGES.log(
                        log,
                        logging.WARNING,
                        "dependency unavailable, will retry %s: %s",
                        _where(msg),
                        exc,
                    )
                    self.readiness.mark_unavailable("dependencies", str(exc))
                    stop.wait(self.retry.delay(3))
                    if not self.readiness.wait_ready(stop):
                        return False
                    continue
                attempt += 1
                if attempt >= self.retry.max_attempts:
                    log.exception("giving up on %s after %d attempts", _where(msg), attempt)
                    return self._dead_letter(msg, exc, attempt, stop)
                log.warning("attempt %d on %s failed: %s", attempt, _where(msg), exc)
                stop.wait(self.retry.delay(attempt))
        return False

    def _dead_letter(
        self, msg: Message, exc: BaseException, attempts: int, stop: threading.Event
    ) -> bool:
        headers = [
            ("slocast.error", f"{type(exc).__name__}: {exc}"[:4000].encode()),
            ("slocast.error_type", type(exc).__name__.encode()),
            ("slocast.original_topic", msg.topic().encode()),
            ("slocast.original_partition", str(msg.partition()).encode()),
            ("slocast.original_offset", str(msg.offset()).encode()),
            ("slocast.attempts", str(attempts).encode()),
            ("slocast.service", self.service.encode()),
            ("slocast.failed_at", f"{time.time():.3f}".encode()),
        ]
        key, value = msg.key(), msg.value()
        for name, data, limit in (
            ("key", key, DLQ_MAX_KEY_BYTES),
            ("value", value, DLQ_MAX_VALUE_BYTES),
        ):
            if data is not None and len(data) > limit:
                headers += [
                    (f"slocast.truncated_{name}_bytes", str(len(data)).encode()),
                    (f"slocast.original_{name}_sha256", hashlib.sha256(data).hexdigest().encode()),
                ]
        key = None if key is None else key[:DLQ_MAX_KEY_BYTES]
        value = None if value is None else value[:DLQ_MAX_VALUE_BYTES]
        dlq = msg.topic() + DLQ_SUFFIX
        delay = self.retry.backoff_s
        while not stop.is_set():
            try:
                self.producer.publish_raw(dlq, key, value, headers)
                log.error("sent %s to %s: %s", _where(msg), dlq, exc)
                self._outcome = "dead_lettered"
                return True
            except Exception as publish_error:  # the DLQ is the last resort: keep trying
                OUTAGES.log(
                    log,
                    logging.ERROR,
                    "cannot write %s to %s (%s); retrying",
                    _where(msg),
                    dlq,
                    publish_error,
                )
                stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        return False

    def _commit(self, consumer: Consumer, msg: Message) -> None:
        try:
            consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # The message was handled; a lost commit only means an idempotent redelivery.
            log.warning("commit of %s failed (%s); it may be redelivered", _where(msg), exc)

    def _guarded(self, fn: Callable[[], None], stop: threading.Event) -> None:
        try:
            fn()
        except Exception as exc:
            if is_outage(exc):
                self.readiness.mark_unavailable("dependencies", str(exc))
            # Every tick fails the same way during an outage: one traceback, then counts.
            OUTAGES.log(log, logging.ERROR, "periodic task failed: %s", exc, exc_info=exc)


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
