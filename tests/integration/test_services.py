"""The services against real servers: every "must show" of issue 4.

Synthetic data and fast families (the baselines and a least-squares candidate,
see families.py) keep the suite within a few minutes on two cores.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request

import pytest
from confluent_kafka import Producer

from conftest import FAMILIES, TANSU_BUCKET, ServiceStack, succeeded

pytestmark = pytest.mark.integration


def _selected(event: dict) -> bool:
    return event.get("event_type") == "model-selected"


def _decisions(stack: ServiceStack, dataset_id: str) -> list:
    return stack.runs(dataset_id, role="decision")


def test_submit_to_promoted_to_serving(stack: ServiceStack) -> None:
    from slocast.devstack.stack import free_port

    port = free_port()
    stack.start("serve", "serve", "--port", str(port))
    stack.start_service("predict", "--listener-only")
    stack.start_service("preprocess")
    stack.start_trainers()
    stack.start_service("evaluator")
    started = time.monotonic()
    dataset_id = stack.submit()
    [selected] = stack.wait_for("model-selected", _selected, timeout=120)
    assert selected["dataset_id"] == dataset_id
    assert selected["family"] == "ridge_ar"
    champion = stack.registry().champion(stack.task)
    assert champion is not None and champion.version == selected["model_version"]

    def serving_version() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=2) as r:
                return json.loads(r.read())["version"]
        except OSError:
            return None

    deadline = time.monotonic() + 30
    while serving_version() != selected["model_version"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serving_version() == selected["model_version"]
    assert time.monotonic() - started < 150


def test_evaluator_started_after_trainers_finished_still_promotes(stack: ServiceStack) -> None:
    stack.start_service("preprocess")
    stack.start_trainers()
    dataset_id = stack.submit()
    stack.wait_for("training", succeeded(stack), count=len(FAMILIES))
    assert stack.registry().champion(stack.task) is None  # nobody decided yet
    stack.start_service("evaluator")
    [selected] = stack.wait_for("model-selected", _selected, timeout=90)
    assert selected["dataset_id"] == dataset_id
    assert len(_decisions(stack, dataset_id)) == 1


def test_evaluator_killed_between_alias_and_event_promotes_exactly_once(
    stack: ServiceStack,
) -> None:
    from slocast.pipeline.evaluator import FAULT_EXIT_CODE
    from slocast.settings import FAULT_EVALUATOR_AFTER_PROMOTE

    stack.start_service("preprocess")
    stack.start_trainers()
    faulty = stack.start_service("evaluator", SLOCAST_FAULT_INJECTION=FAULT_EVALUATOR_AFTER_PROMOTE)
    stack.expected_exits = ("evaluator",)
    dataset_id = stack.submit()
    assert faulty.popen.wait(120) == FAULT_EXIT_CODE
    champion = stack.registry().champion(stack.task)
    assert champion is not None, "the alias was moved before the crash"
    assert stack.read_all("model-selected") == [], "the crash came before the event"
    [record] = _decisions(stack, dataset_id)
    assert record.data.tags["slocast.published"] == "false"

    stack.children.pop("evaluator")
    stack.start_service("evaluator")
    [selected] = stack.wait_for("model-selected", _selected, timeout=90)
    assert selected["model_version"] == champion.version
    time.sleep(3)  # let a duplicate show up if there were one
    assert len(stack.read_all("model-selected", at_least=1)) == 1
    [record] = _decisions(stack, dataset_id)
    assert record.data.tags["slocast.published"] == "true"
    assert stack.registry().champion(stack.task).version == champion.version


def test_mlflow_down_at_evaluator_start_means_not_ready_then_recovers(
    stack: ServiceStack,
) -> None:
    from slocast.devstack.stack import (
        Child,
        free_port,
        http_ok,
        mlflow_command,
        mlflow_env,
        wait_until,
    )

    port = free_port()  # a second MLflow server over the same store starts here later
    stack.start_service("preprocess")
    stack.start_trainers()
    stack.start_service("evaluator", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    dataset_id = stack.submit()
    stack.wait_for("training", succeeded(stack), count=len(FAMILIES))
    status, report = stack.readyz("evaluator")
    assert status == 503 and not report["checks"]["mlflow"]["ok"]
    assert stack.committed_offsets("evaluator") == []

    servers = stack.servers
    mlflow = Child(
        "mlflow-2",
        mlflow_command(port, servers.mlflow_backend, servers.mlflow_artifacts),
        {**stack.env, **mlflow_env(servers.s3)},
        stack.log,
    )
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 120, "the second MLflow")
        [selected] = stack.wait_for("model-selected", _selected, timeout=90)
        assert selected["dataset_id"] == dataset_id
        assert stack.readyz("evaluator")[0] == 200
        wait_until(lambda: stack.committed_offsets("evaluator") != [], 30, "evaluator commits")
    finally:
        stack.stop_all()
        mlflow.stop()


def test_trainer_killed_mid_training_is_redelivered_and_trains_once(stack: ServiceStack) -> None:
    stack.start_service("preprocess")
    stack.start_trainers(("ridge_ar",), SLOCAST_TEST_FIT_SECONDS="30")
    dataset_id = stack.submit()
    stack.wait_for("training", lambda e: e.get("event_type") == "training-started")
    stack.kill("trainer-ridge_ar")
    stack.start_trainers(("ridge_ar",))
    stack.wait_for("training", succeeded(stack, "ridge_ar"))
    started = [
        m
        for m in stack.read_all("training")
        if json.loads(m.value())["event_type"] == "training-started"
    ]
    assert len(started) == 2, "the message was redelivered to the new trainer"
    versions = stack.state().dataset_versions(stack.task, dataset_id)
    assert list(versions) == ["ridge_ar"]
    runs = [r for r in stack.runs(dataset_id) if r.data.tags["slocast.family"] == "ridge_ar"]
    assert len(runs) == 1, "trained once"


def test_same_dataset_twice_trains_once(stack: ServiceStack) -> None:
    stack.start_service("preprocess")
    stack.start_trainers(("persistence", "ridge_ar"))
    first = stack.submit(seed=3)
    stack.wait_for("training", succeeded(stack), count=2)
    second = stack.submit(seed=3)
    assert first == second
    reused = stack.wait_for("training", lambda e: e.get("reused") is True, count=2)
    assert {e["family"] for e in reused} == {"persistence", "ridge_ar"}
    assert len(stack.runs(first)) == 2
    assert (
        len(stack.read_all("dataset-ready", at_least=2)) == 2
    )  # republished, deduplicated downstream


def test_malformed_event_goes_to_dlq_and_consumer_continues(stack: ServiceStack) -> None:
    from slocast.pipeline.kafka.transport import EventProducer

    stack.start_service("preprocess")
    producer = EventProducer(stack.env["SLOCAST_KAFKA_BOOTSTRAP"])
    stack.submit(seed=5)  # creates the topics; a valid event before the bad one
    producer.publish_raw(
        stack.topic("dataset-submitted"), b"bad", b'{"event_type": "dataset-submitted"'
    )
    producer.close()
    # A message larger than our producers may send (librdkafka's 1 MB default) from
    # another client: it used to be unsendable to the DLQ, and the service retried
    # that write forever while consuming nothing else.
    huge = b'{"pad": "' + b"x" * 2_000_000 + b'"}'
    big = Producer(
        {"bootstrap.servers": stack.env["SLOCAST_KAFKA_BOOTSTRAP"], "message.max.bytes": 5_000_000}
    )
    big.produce(stack.topic("dataset-submitted"), key=b"huge", value=huge)
    assert big.flush(30) == 0
    dataset_id = stack.submit(seed=6)
    stack.wait_for("dataset-ready", lambda e: e["dataset_id"] == dataset_id)
    # Different keys, so maybe different partitions: no order between the two.
    letters = {m.key(): m for m in stack.read_all("dataset-submitted.dlq", at_least=2)}
    dead, cut = letters[b"bad"], letters[b"huge"]
    headers = dict(dead.headers())
    assert dead.value() == b'{"event_type": "dataset-submitted"'
    assert b"invalid event" in headers["slocast.error"]
    assert headers["slocast.original_topic"] == stack.topic("dataset-submitted").encode()
    assert headers["slocast.attempts"] == b"1"
    headers = dict(cut.headers())
    assert b"larger than an event can be" in headers["slocast.error"]
    assert cut.key() == b"huge" and huge.startswith(cut.value()) and len(cut.value()) < len(huge)
    assert headers["slocast.truncated_value_bytes"] == str(len(huge)).encode()
    assert headers["slocast.original_value_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert len(stack.read_all("dataset-ready", at_least=2)) == 2


def test_broker_restart_with_s3_storage_loses_nothing(stack: ServiceStack) -> None:
    from slocast.devstack.stack import (
        Child,
        free_port,
        tansu_command,
        tansu_s3_env,
        tcp_open,
        wait_until,
    )

    port = free_port()
    command = tansu_command(port, f"s3://{TANSU_BUCKET}/")
    env = {**stack.env, **tansu_s3_env(stack.servers.s3)}

    def start_broker() -> Child:
        broker = Child("tansu-s3", command, env, stack.log)
        wait_until(lambda: tcp_open(port), 30, "tansu (s3)")
        return broker

    broker = start_broker()
    stack.env["SLOCAST_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
    try:
        stack.start_service("preprocess")
        stack.start_trainers()
        stack.start_service("evaluator")
        first = stack.submit(seed=7)
        stack.wait_for("model-selected", lambda e: e["dataset_id"] == first, timeout=120)
        broker.stop()
        time.sleep(2)
        broker = start_broker()
        second = stack.submit(seed=8, rows=2600)
        # The second decision may keep the first champion: wait for the decision itself.
        wait_until(lambda: len(_decisions(stack, second)) == 1, 150, "the second decision", 0.5)
        ready = {
            json.loads(m.value())["dataset_id"] for m in stack.read_all("dataset-ready", at_least=2)
        }
        assert ready == {first, second}
        assert len(_decisions(stack, first)) == 1 and len(_decisions(stack, second)) == 1
    finally:
        stack.stop_all()
        broker.stop()
