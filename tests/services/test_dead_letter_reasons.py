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
    consumer = ServiceConsumer(
        bootstrap="unused:9092",
        group="g",
        topics=["ns.dataset-submitted"],
        handler=PreprocessHandler(SimpleNamespace(store=store)),
        producer=producer,
        readiness=Readiness({}),
        service="preprocess",
        retry=RetryPolicy(1, 0.0),
    )
    assert consumer._process(Message(event.to_bytes()), threading.Event())
    [(topic, headers)] = producer.sent
    assert topic == "ns.dataset-submitted.dlq"
    reason = headers["slocast.error"].decode()
    assert headers["slocast.error_type"] == b"PermanentError"
    assert uri in reason, reason
    assert "slocast-preprocess-" not in reason, reason  # the deleted scratch copy
