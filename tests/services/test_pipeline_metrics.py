"""Metrics of the Kafka services: consumer outcomes and lag, training, decisions, /metrics."""

from __future__ import annotations

import threading
import urllib.request

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from slocast.pipeline.health import HealthServer, Readiness
from slocast.pipeline.kafka import transport as kafka_module
from slocast.pipeline.kafka.transport import PermanentError, RetryPolicy, ServiceConsumer
from slocast.pipeline.metrics import PipelineMetrics, consumer_lag


def samples(metrics: PipelineMetrics) -> dict[tuple, float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: PipelineMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[name, tuple(sorted(labels.items()))]


class FakeConsumer:
    """Assignment, committed offsets and watermarks of confluent_kafka.Consumer."""

    def __init__(self, committed: dict[tuple[str, int], int], marks: dict) -> None:
        self._committed = committed
        self._marks = marks

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self._committed]

    def committed(self, partitions, timeout=None) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self._committed[tp.topic, tp.partition])
            for tp in partitions
        ]

    def get_watermark_offsets(self, tp, timeout=None, cached=False) -> tuple[int, int]:
        return self._marks[tp.topic, tp.partition]


def test_consumer_lag_is_high_watermark_minus_committed() -> None:
    fake = FakeConsumer(
        {("dataset-ready", 0): 7, ("dataset-ready", 1): OFFSET_INVALID},
        {("dataset-ready", 0): (0, 10), ("dataset-ready", 1): (3, 5)},
    )
    # partition 1 never committed: counted from the low watermark (earliest)
    assert sorted(consumer_lag(fake)) == [("dataset-ready", 0, 3), ("dataset-ready", 1, 2)]
    assert consumer_lag(FakeConsumer({}, {})) == []

    metrics = PipelineMetrics("trainer-xgboost")
    metrics.set_lag(consumer_lag(fake))
    lag = "slocast_pipeline_consumer_lag"
    labels = {"service": "trainer-xgboost", "topic": "dataset-ready"}
    assert value(metrics, lag, partition="0", **labels) == 3
    assert value(metrics, lag, partition="1", **labels) == 2
    metrics.set_lag([("dataset-ready", 0, 0)])  # a revoked partition disappears
    assert value(metrics, lag, partition="0", **labels) == 0
    assert (lag, tuple(sorted({"partition": "1", **labels}.items()))) not in samples(metrics)


def test_training_and_decision_metrics() -> None:
    metrics = PipelineMetrics("evaluator")
    metrics.training_seconds.labels("xgboost").observe(42.0)
    metrics.trainings.labels("xgboost", "succeeded").inc()
    metrics.record_decision("site-a", "all-reported", promoted=True)
    metrics.record_decision("site-a", "deadline", promoted=False)
    metrics.record_promotion("site-a", "gru", at=1_700_000_000.0)
    assert value(metrics, "slocast_trainer_training_seconds_count", family="xgboost") == 1
    assert value(metrics, "slocast_trainer_training_seconds_sum", family="xgboost") == 42.0
    assert value(metrics, "slocast_trainer_trainings_total", family="xgboost", outcome="succeeded")
    decisions = "slocast_evaluator_decisions_total"
    assert value(metrics, decisions, task="site-a", trigger="all-reported", promoted="true") == 1
    assert value(metrics, decisions, task="site-a", trigger="deadline", promoted="false") == 1
    assert value(metrics, "slocast_evaluator_promotions_total", task="site-a", family="gru") == 1
    last = "slocast_evaluator_last_promotion_timestamp_seconds"
    assert value(metrics, last, task="site-a") == 1_700_000_000.0


class Msg:
    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self._topic, self._offset, self._value = topic, offset, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value

    def error(self):
        return None


class ScriptedConsumer(FakeConsumer):
    """Hands out the messages, then stops the service."""

    messages: list[Msg] = []
    stop: threading.Event

    def __init__(self, config: dict) -> None:
        super().__init__({("dataset-ready", 0): 1}, {("dataset-ready", 0): (0, 4)})
        self.commits: list[int] = []

    def subscribe(self, topics) -> None:
        pass

    def poll(self, timeout: float):
        if not self.messages:
            self.stop.set()
            return None
        return self.messages.pop(0)

    def commit(self, message, asynchronous: bool) -> None:
        self.commits.append(message.offset())

    def close(self) -> None:
        pass


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def publish_raw(self, topic, key, value, headers=None) -> None:
        self.sent.append(topic)


def test_consumer_counts_handled_and_dead_lettered_messages(monkeypatch) -> None:
    stop = threading.Event()
    ScriptedConsumer.stop = stop
    ScriptedConsumer.messages = [
        Msg("dataset-ready", 1, b"ok"),
        Msg("dataset-ready", 2, b"bad"),
        Msg("dataset-ready", 3, b"ok"),
    ]
    monkeypatch.setattr(kafka_module, "Consumer", ScriptedConsumer)

    def handler(msg) -> None:
        if msg.value() == b"bad":
            raise PermanentError("malformed event")

    metrics = PipelineMetrics("trainer-xgboost")
    producer = RecordingProducer()
    ServiceConsumer(
        bootstrap="unused:9092",
        group="g",
        topics=["dataset-ready", "other"],
        handler=handler,
        producer=producer,
        readiness=Readiness({}),
        service="trainer-xgboost",
        retry=RetryPolicy(2, 0.0),
        metrics=metrics,
    ).run(stop)
    assert producer.sent == ["dataset-ready.dlq"]
    messages = "slocast_pipeline_messages_total"
    labels = {"service": "trainer-xgboost", "topic": "dataset-ready"}
    assert value(metrics, messages, outcome="handled", **labels) == 2
    assert value(metrics, messages, outcome="dead_lettered", **labels) == 1
    assert value(metrics, "slocast_pipeline_handler_seconds_count", **labels) == 3
    assert (
        value(metrics, messages, outcome="dead_lettered", service="trainer-xgboost", topic="other")
        == 0
    )
    # the lag was read once at start (committed 1, high watermark 4)
    assert value(metrics, "slocast_pipeline_consumer_lag", partition="0", **labels) == 3


@pytest.fixture
def health_with_metrics():
    metrics = PipelineMetrics("preprocess")
    metrics.record_decision("t", "manual", promoted=True)
    server = HealthServer(Readiness({}), 0, host="127.0.0.1", metrics=metrics).start()
    yield server
    server.stop()


def test_health_port_serves_metrics(health_with_metrics) -> None:
    url = f"http://127.0.0.1:{health_with_metrics.port}"
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    assert (
        'slocast_evaluator_decisions_total{promoted="true",task="t",trigger="manual"} 1.0' in body
    )
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert response.status == 200
