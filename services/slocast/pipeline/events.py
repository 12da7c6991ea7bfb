"""Versioned event schemas exchanged over Kafka.

Every event is JSON with an ``event_type`` and a ``schema_version``; consumers refuse
unknown types and newer major versions (the message goes to the dead-letter topic
instead of being half-understood). Events are claim checks: they carry object URIs
and SHA-256 content hashes, never bulk data.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from slocast.adapters.registry import TASK_PATTERN

SCHEMA_VERSION = 1
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Task = Annotated[str, Field(pattern=TASK_PATTERN)]

# Topic suffixes; the full name is ``<namespace>.<suffix>`` (see settings.Topics).
DATASET_SUBMITTED = "dataset-submitted"
DATASET_READY = "dataset-ready"
TRAINING = "training"  # training-started / -succeeded / -failed, keyed by dataset id
MODEL_SELECTED = "model-selected"
LATENCY_SAMPLES = "latency-samples"
DLQ_SUFFIX = ".dlq"
# Events are claim checks (URIs, hashes, a config): a few hundred bytes. A larger
# message is not an event, and is refused before it is parsed.
MAX_EVENT_BYTES = 64 * 1024


class EventError(ValueError):
    """A message that is not a valid event of a known type and version."""


class Event(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    produced_at: float = Field(default_factory=time.time)
    producer: str = ""

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class DatasetSubmitted(Event):
    """Raw files uploaded to the object store; preprocess takes it from here."""

    event_type: Literal["dataset-submitted"] = "dataset-submitted"
    task: Task
    train_uri: str
    train_sha256: Sha256
    test_uri: str | None = None
    test_sha256: Sha256 | None = None
    config: dict = Field(default_factory=dict, description="PipelineConfig.to_dict()")


class DatasetReady(Event):
    """A processed dataset is stored under its content hash."""

    event_type: Literal["dataset-ready"] = "dataset-ready"
    task: Task
    dataset_id: Sha256
    dataset_uri: str
    metadata_sha256: Sha256
    train_windows: int
    test_windows: int


class _TrainingEvent(Event):
    task: Task
    dataset_id: Sha256
    family: str
    idempotency_key: Sha256


class TrainingStarted(_TrainingEvent):
    event_type: Literal["training-started"] = "training-started"


class TrainingSucceeded(_TrainingEvent):
    event_type: Literal["training-succeeded"] = "training-succeeded"
    run_id: str
    model_version: str
    model_uri: str
    val_nrmse: float | None = None
    train_seconds: float
    reused: bool = Field(False, description="True when an earlier identical run was found")


class TrainingFailed(_TrainingEvent):
    event_type: Literal["training-failed"] = "training-failed"
    error: str
    run_id: str | None = None


class ModelSelected(Event):
    """The ``champion`` alias now points at this version."""

    event_type: Literal["model-selected"] = "model-selected"
    task: Task
    dataset_id: Sha256
    decision_id: str
    registered_model: str
    model_version: str
    run_id: str
    family: str
    model_uri: str


class LatencySample(Event):
    """One observed LLM request (workload 2); the latency training server consumes these."""

    event_type: Literal["latency-sample"] = "latency-sample"
    kv_cache_percentage: float = Field(ge=0.0, le=1.0)
    input_token_length: int = Field(ge=0)
    num_request_waiting: int = Field(ge=0)
    num_request_running: int = Field(ge=0)
    num_tokens_generated: int = Field(ge=0)
    prefix_cache_score: float = Field(0.0, ge=0.0, le=1.0)
    prefill_tokens_in_flight: int = Field(0, ge=0)
    decode_tokens_in_flight: int = Field(0, ge=0)
    pod_type: Literal["", "prefill", "decode"] = ""
    actual_ttft_ms: float = Field(ge=0.0)
    actual_tpot_ms: float = Field(ge=0.0)
    observed_at: float = Field(default_factory=time.time)


AnyEvent = Annotated[
    DatasetSubmitted
    | DatasetReady
    | TrainingStarted
    | TrainingSucceeded
    | TrainingFailed
    | ModelSelected
    | LatencySample,
    Field(discriminator="event_type"),
]
_ADAPTER: TypeAdapter = TypeAdapter(AnyEvent)
T = TypeVar("T", bound=Event)


def parse_event(data: bytes | None, *expected: type[T]) -> T:
    """Decode and validate ``data``; raise :class:`EventError` if it is not one of ``expected``."""
    if not data:
        raise EventError("empty message")
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(
            f"message of {len(data)} bytes is larger than an event can be ({MAX_EVENT_BYTES} "
            "bytes): events carry object URIs and hashes, never the data"
        )
    try:
        event = _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise EventError(f"invalid event: {_short(exc)}") from None
    if expected and not isinstance(event, expected):
        names = ", ".join(e.model_fields["event_type"].default for e in expected)
        raise EventError(f"unexpected event type {event.event_type!r}; expected {names}")
    return event


def _short(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
