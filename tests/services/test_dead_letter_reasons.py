"""A claimed file that is bad: the dead letter names the claim-check URI, not a temp file."""

from __future__ import annotations

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
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "ns.dataset-submitted"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, bytes]]] = []

    def publish_raw(self, topic, key, value, headers=None) -> None:
        self.sent.append((topic, dict(headers or [])))


def _preprocess_consumer(store: LocalStore, producer: RecordingProducer) -> ServiceConsumer:
    """The preprocess service's consumer without a broker: one try, then the dead letter."""
    return ServiceConsumer(
        bootstrap="unused:9092",
        group="g",
        topics=["ns.dataset-submitted"],
        handler=PreprocessHandler(SimpleNamespace(store=store)),
        producer=producer,
        readiness=Readiness({}),
        service="preprocess",
        retry=RetryPolicy(1, 0.0),
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
