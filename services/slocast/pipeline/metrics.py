"""Prometheus metrics of the Kafka services, served at ``/metrics`` on their health port.

One registry per process (no globals). What each part records:

- every consumer: messages handled and dead-lettered per topic, and the lag of its
  group (high watermark minus the committed offset, per assigned partition),
  refreshed between messages;
- trainers: training time and outcome per family;
- the evaluator: decisions (promoted or not) per task, promotions per family and
  the time of the last promotion this process applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Training takes seconds (baselines) to tens of minutes (recurrent families).
TRAINING_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# Handler time spans milliseconds (a duplicate event) to a whole training.
HANDLER_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600)
MESSAGE_OUTCOMES = ("handled", "dead_lettered")
# Lag is read from the broker at most this often (a metadata round trip per partition).
LAG_REFRESH_SECONDS = 15.0


class PipelineMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "slocast_pipeline_messages",
            "Messages consumed, by topic and outcome (handled: committed after the "
            "handler returned; dead_lettered: written to <topic>.dlq, then committed).",
            ("service", "topic", "outcome"),
            registry=r,
        )
        self.handler_seconds = Histogram(
            "slocast_pipeline_handler_seconds",
            "Time from taking a message to committing it, retries included.",
            ("service", "topic"),
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "slocast_pipeline_consumer_lag",
            "Messages of the topic partition not yet committed by this service's "
            "consumer group (high watermark minus committed offset), read between messages.",
            ("service", "topic", "partition"),
            registry=r,
        )
        self.training_seconds = Histogram(
            "slocast_trainer_training_seconds",
            "Wall time of fitting and calibrating one model family on one dataset.",
            ("family",),
            buckets=TRAINING_BUCKETS,
            registry=r,
        )
        self.trainings = Counter(
            "slocast_trainer_trainings",
            "Training requests by outcome (succeeded, failed: the family cannot learn "
            "the data; reused: the idempotency key was already trained).",
            ("family", "outcome"),
            registry=r,
        )
        self.decisions = Counter(
            "slocast_evaluator_decisions",
            "Promotion decisions recorded, by task, trigger and whether a model was promoted.",
            ("task", "trigger", "promoted"),
            registry=r,
        )
        self.promotions = Counter(
            "slocast_evaluator_promotions",
            "Champion alias moves applied by this evaluator, by task and winning family.",
            ("task", "family"),
            registry=r,
        )
        self.last_promotion = Gauge(
            "slocast_evaluator_last_promotion_timestamp_seconds",
            "Unix time this evaluator last moved the champion alias of the task.",
            ("task",),
            registry=r,
        )

    # --- consumer ------------------------------------------------------------------
    def init_topics(self, topics: Iterable[str]) -> None:
        """Create the message series at 0, so that ``increase()`` sees the first one
        (a series born at 1 has no increase to Prometheus)."""
        for topic in topics:
            for outcome in MESSAGE_OUTCOMES:
                self.messages.labels(self.service, topic, outcome)

    def count_message(self, topic: str, outcome: str, seconds: float) -> None:
        self.messages.labels(self.service, topic, outcome).inc()
        self.handler_seconds.labels(self.service, topic).observe(seconds)

    def set_lag(self, lags: Iterable[tuple[str, int, int]]) -> None:
        """Replace the lag series with ``(topic, partition, lag)`` of the current assignment."""
        self.consumer_lag.clear()
        for topic, partition, lag in lags:
            self.consumer_lag.labels(self.service, topic, str(partition)).set(lag)

    # --- evaluator -----------------------------------------------------------------
    def record_decision(self, task: str, trigger: str, promoted: bool) -> None:
        self.decisions.labels(task, trigger, "true" if promoted else "false").inc()

    def record_promotion(self, task: str, family: str, at: float | None = None) -> None:
        self.promotions.labels(task, family).inc()
        self.last_promotion.labels(task).set(time.time() if at is None else at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def consumer_lag(consumer, timeout_s: float = 2.0) -> list[tuple[str, int, int]]:
    """``(topic, partition, lag)`` for the partitions assigned to ``consumer``.

    Lag = high watermark - committed offset of the group; a partition the group
    never committed counts from the low watermark (``auto.offset.reset=earliest``).
    """
    assigned = consumer.assignment()
    if not assigned:
        return []
    committed = consumer.committed(assigned, timeout=timeout_s)
    lags = []
    for tp in committed:
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        start = tp.offset if tp.offset >= 0 else low
        lags.append((tp.topic, tp.partition, max(high - start, 0)))
    return lags
