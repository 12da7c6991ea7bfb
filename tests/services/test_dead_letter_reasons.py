"""A claimed file that is bad: the dead letter names the claim-check URI, not a temp file."""

from __future__ import annotations

import hashlib
import json
import threading
from types import SimpleNamespace

import pytest

from slocast.adapters.storage import LocalStore
from slocast.core.config import PipelineConfig
from slocast.pipeline.claims import upload_file
from slocast.pipeline.events import DatasetSubmitted
from slocast.pipeline.health import Readiness
from slocast.pipeline.kafka.transport import RetryPolicy, ServiceConsumer
from slocast.pipeline.preprocessor import PreprocessHandler


class Message:
    def __init__(self, value: bytes, key: bytes = b"k") -> None:
        self._value = value
        self._key = key

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "ns.dataset-submitted"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, bytes]]] = []
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def publish_raw(self, topic, key, value, headers=None) -> None:
        self.sent.append((topic, dict(headers or [])))
        self.records.append((key, value))


def _preprocess_consumer(
    store: LocalStore, producer: RecordingProducer, retries: int = 1
) -> ServiceConsumer:
    """The preprocess service's consumer without a broker: ``retries`` tries (at most),
    then the dead letter."""
    return ServiceConsumer(
        bootstrap="unused:9092",
        group="g",
        topics=["ns.dataset-submitted"],
        handler=PreprocessHandler(SimpleNamespace(store=store)),
        producer=producer,
        readiness=Readiness({}),
        service="preprocess",
        retry=RetryPolicy(retries, 0.0),
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("cells.csv", b"time,dl_bitrate\n"),  # header only: no data rows
        ("cells.csv", b"not,a\n1,2\n"),  # missing columns
        ("cells.parquet", b"this is not parquet"),  # unreadable
    ],
)
def test_dead_letter_reason_names_the_claim_check_uri(tmp_path, name, content) -> None:
    store = LocalStore(tmp_path / "store")
    local = tmp_path / name
    local.write_bytes(content)
    uri, digest = upload_file(store, local)
    event = DatasetSubmitted(
        producer="submit",
        task="cell",
        train_uri=uri,
        train_sha256=digest,
        config=PipelineConfig().to_dict(),
    )
    producer = RecordingProducer()
    assert _preprocess_consumer(store, producer)._process(
        Message(event.to_bytes()), threading.Event()
    )
    [(topic, headers)] = producer.sent
    assert topic == "ns.dataset-submitted.dlq"
    reason = headers["slocast.error"].decode()
    assert headers["slocast.error_type"] == b"PermanentError"
    assert uri in reason, reason
    assert "slocast-preprocess-" not in reason, reason  # the deleted scratch copy


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list = []

    def publish(self, topic, event, key=None) -> None:
        self.events.append((topic, event))


def test_a_gap_is_refused_or_filled_as_the_event_config_says(tmp_path) -> None:
    from slocast.core.synthetic import generate_lte
    from slocast.preprocess.store import load_dataset

    store = LocalStore(tmp_path / "store")
    local = tmp_path / "cell.csv"
    generate_lte(600, seed=7).drop(index=[100, 101]).to_csv(local, index=False)
    uri, digest = upload_file(store, local)

    def submitted(max_gap_rows: int) -> Message:
        config = PipelineConfig(max_gap_rows=max_gap_rows).to_dict()
        event = DatasetSubmitted(
            producer="submit", task="cell", train_uri=uri, train_sha256=digest, config=config
        )
        return Message(event.to_bytes())

    # The default refuses the gap: a dead letter that says how to allow it.
    dead = RecordingProducer()
    assert _preprocess_consumer(store, dead)._process(submitted(0), threading.Event())
    [(topic, headers)] = dead.sent
    assert topic == "ns.dataset-submitted.dlq"
    assert "a gap of 2 missing row(s)" in headers["slocast.error"].decode()

    # The submitter's --max-gap-rows travels in the event's config.
    ready = RecordingPublisher()
    ctx = SimpleNamespace(
        store=store,
        producer=ready,
        settings=SimpleNamespace(topics=SimpleNamespace(dataset_ready="ns.dataset-ready")),
    )
    PreprocessHandler(ctx)(submitted(2))
    [(topic, event)] = ready.events
    assert topic == "ns.dataset-ready"
    dataset = load_dataset(store, event.dataset_id)
    assert dataset.config.max_gap_rows == 2
    assert dataset.summary()["empty_rows"]["train"] == 2 and len(dataset.times) == 600


def _submitted(store: LocalStore, tmp_path, **overrides) -> bytes:
    from slocast.core.synthetic import generate_lte

    local = tmp_path / "cell.csv"
    generate_lte(600, seed=7).to_csv(local, index=False)
    uri, digest = upload_file(store, local)
    event = {
        "event_type": "dataset-submitted",
        "schema_version": 1,
        "task": "cell",
        "train_uri": uri,
        "train_sha256": digest,
        "config": PipelineConfig().to_dict(),
    }
    for key, value in overrides.items():
        if key == "config":
            event["config"] = {**event["config"], **value}
        else:
            event[key] = value(event[key]) if callable(value) else value
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"config": {"window": 10.5}}, "window must be a whole number"),
        ({"config": {"quantiles": []}}, "quantiles must be a non-empty list"),
        (
            {"train_uri": lambda uri: uri.rsplit("/", 3)[0] + "/../x/cell.csv"},
            "does not name an object",
        ),
        ({"train_uri": lambda uri: uri.rsplit("/", 3)[0] + "/"}, "does not name an object"),
        ({"train_uri": lambda uri: uri.rsplit("/", 2)[0]}, "no such object"),  # a directory
    ],
)
def test_bad_configs_and_claims_are_dead_lettered_at_once(tmp_path, overrides, reason) -> None:
    """Errors that the same message would raise again go to the DLQ on the first try
    (retrying them only delays the queue and logs tracebacks)."""
    store = LocalStore(tmp_path / "store")
    producer = RecordingProducer()
    message = Message(_submitted(store, tmp_path, **overrides))
    assert _preprocess_consumer(store, producer, retries=5)._process(message, threading.Event())
    [(topic, headers)] = producer.sent
    assert topic == "ns.dataset-submitted.dlq"
    assert headers["slocast.attempts"] == b"1"
    assert reason in headers["slocast.error"].decode()


def test_an_oversized_message_is_dead_lettered_cut_to_size_with_its_hash(tmp_path) -> None:
    """A producer refuses a message over its size limit for good: a poison message
    copied whole to the DLQ would be retried forever and block the topic."""
    from slocast.pipeline.kafka.transport import DLQ_MAX_KEY_BYTES, DLQ_MAX_VALUE_BYTES

    store = LocalStore(tmp_path / "store")
    producer = RecordingProducer()
    value, key = b"{" + b" " * 3_000_000 + b"}", b"k" * 10_000
    assert _preprocess_consumer(store, producer, retries=5)._process(
        Message(value, key), threading.Event()
    )
    [(topic, headers)] = producer.sent
    [(dead_key, dead_value)] = producer.records
    assert "larger than an event can be" in headers["slocast.error"].decode()
    assert dead_value == value[:DLQ_MAX_VALUE_BYTES] and dead_key == key[:DLQ_MAX_KEY_BYTES]
    assert headers["slocast.truncated_value_bytes"] == b"3000002"
    assert headers["slocast.original_value_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["slocast.truncated_key_bytes"] == b"10000"
    # An event-sized message is copied whole, with no truncation headers.
    producer = RecordingProducer()
    _preprocess_consumer(store, producer)._process(Message(b"[1, 2]"), threading.Event())
    assert producer.records == [(b"k", b"[1, 2]")]
    assert not any(name.startswith("slocast.truncated") for name in producer.sent[0][1])
