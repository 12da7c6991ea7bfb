"""Real servers for the service tests: moto S3, a Tansu broker and an MLflow server.

Started once per session on free 127.0.0.1 ports and stopped at the end. Each test
gets a :class:`ServiceStack` with a fresh namespace (topics, consumer groups), task
(registered model) and store prefix, and stops every service it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slocast.devstack.stack import (
    BUCKET,
    LOCAL_S3_ENV,
    Child,
    create_bucket,
    free_port,
    http_ok,
    mlflow_command,
    mlflow_env,
    moto_command,
    tansu_command,
    tcp_open,
    wait_until,
)

HERE = Path(__file__).parent
TANSU_BUCKET = "tansu"
SERVICE_MAIN = str(HERE / "service_main.py")
FAMILIES = ("persistence", "seasonal_naive", "ridge_ar")


def _clean_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("SLOCAST_", "MLFLOW_", "AWS_"))
    }


@dataclass
class Servers:
    s3: str
    bootstrap: str
    mlflow: str
    mlflow_backend: str
    mlflow_artifacts: str
    logs: Path


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    log = open(root / "servers.log", "w")  # noqa: SIM115 (closed at teardown)
    base = _clean_env()
    children: list[Child] = []
    try:
        s3_port, broker_port, mlflow_port = free_port(), free_port(), free_port()
        s3 = f"http://127.0.0.1:{s3_port}"
        children.append(Child("s3", moto_command(s3_port), base, log))
        wait_until(lambda: tcp_open(s3_port), 30, "moto")
        create_bucket(s3, BUCKET)
        create_bucket(s3, TANSU_BUCKET)
        children.append(Child("broker", tansu_command(broker_port), base, log))
        wait_until(lambda: tcp_open(broker_port), 30, "tansu")
        backend = f"sqlite:///{root / 'mlflow.db'}"
        artifacts = f"s3://{BUCKET}/mlflow"
        children.append(
            Child(
                "mlflow",
                mlflow_command(mlflow_port, backend, artifacts),
                {**base, **mlflow_env(s3)},
                log,
            )
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 120, "MLflow")
        yield Servers(
            s3,
            f"127.0.0.1:{broker_port}",
            f"http://127.0.0.1:{mlflow_port}",
            backend,
            artifacts,
            root,
        )
    finally:
        for child in reversed(children):
            child.stop()
        log.close()


class ServiceStack:
    """The services of one test, each a real subprocess, with helpers to watch the topics."""

    def __init__(self, servers: Servers, home: Path, *, bootstrap: str | None = None) -> None:
        self.servers = servers
        self.home = home
        self.namespace = "t" + uuid.uuid4().hex[:10]
        self.task = self.namespace
        self.log = open(home / "services.log", "a")  # noqa: SIM115
        self.env = {
            **_clean_env(),
            **LOCAL_S3_ENV,
            "PYTHONUNBUFFERED": "1",
            "SLOCAST_HOME": str(home),
            "SLOCAST_KAFKA_BOOTSTRAP": bootstrap or servers.bootstrap,
            "SLOCAST_NAMESPACE": self.namespace,
            "SLOCAST_TOPIC_PARTITIONS": "2",
            "SLOCAST_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "SLOCAST_STORE_URI": f"s3://{BUCKET}/{self.namespace}",
            "SLOCAST_S3_ENDPOINT_URL": servers.s3,
            "MLFLOW_TRACKING_URI": servers.mlflow,
            "SLOCAST_MAX_ATTEMPTS": "3",
            "SLOCAST_RETRY_BACKOFF_SECONDS": "0.2",
            "SLOCAST_EXPECTED_FAMILIES": ",".join(FAMILIES),
            "SLOCAST_EVALUATION_DEADLINE_SECONDS": "600",
            "SLOCAST_EVALUATOR_TICK_SECONDS": "1",
            "SLOCAST_TASK": self.task,
            "SLOCAST_SERVE_CACHE": str(home / "serving"),
            "SLOCAST_GENERATION_POLL_SECONDS": "0.05",
            "SLOCAST_REGISTRY_POLL_SECONDS": "600",  # events, not polling, must do the reload
        }
        self.children: dict[str, Child] = {}
        self.health_ports: dict[str, int] = {}

    # --- services -----------------------------------------------------------------
    def start(self, name: str, *args: str, **extra_env: str) -> Child:
        port = free_port()
        env = {**self.env, "SLOCAST_HEALTH_PORT": str(port), **extra_env}
        command = [sys.executable, SERVICE_MAIN, *args]
        child = Child(name, command, env, self.log)
        self.children[name] = child
        self.health_ports[name] = port
        return child

    def start_service(
        self, kind: str, *args: str, name: str | None = None, **extra_env: str
    ) -> Child:
        return self.start(name or kind, "service", kind, *args, **extra_env)

    def start_trainers(self, families: tuple[str, ...] = FAMILIES, **extra_env: str) -> None:
        for family in families:
            self.start_service("trainer", "--family", family, name=f"trainer-{family}", **extra_env)

    def kill(self, name: str) -> None:
        child = self.children.pop(name)
        child.popen.send_signal(signal.SIGKILL)
        child.popen.wait(10)

    def readyz(self, name: str) -> tuple[int, dict]:
        url = f"http://127.0.0.1:{self.health_ports[name]}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop_all(self) -> None:
        children = list(self.children.values())
        for child in children:  # signal all first: they shut down in parallel
            if child.popen.poll() is None:
                child.popen.terminate()
        for child in children:
            child.stop(timeout=10)
        self.children.clear()
        self.log.close()

    # --- driving and watching -----------------------------------------------------
    def settings(self):
        from slocast.settings import CommonSettings

        return CommonSettings.from_env(self.env)

    def write_dataset(self, rows: int = 2500, seed: int = 0) -> Path:
        from slocast.core.synthetic import generate_lte

        path = self.home / f"lte-{seed}-{rows}.csv"
        generate_lte(rows, seed=seed).to_csv(path, index=False)
        return path

    def submit(self, rows: int = 2500, seed: int = 0) -> str:
        from slocast.pipeline.submit import submit_dataset

        return submit_dataset(
            self.settings(), self.write_dataset(rows, seed), task=self.task
        ).dataset_id

    def topic(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    def read_all(
        self, suffix: str, *, at_least: int = 0, settle: float = 3.0, timeout: float = 30.0
    ) -> list:
        """Every message of a topic from the start (a fresh group per call).

        Returns once ``at_least`` messages arrived and nothing more came for ``settle``
        seconds after the partitions were assigned (or at ``timeout``).
        """
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.env["SLOCAST_KAFKA_BOOTSTRAP"],
                "group.id": f"{self.namespace}.reader-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 500,
            }
        )
        consumer.subscribe([self.topic(suffix)])
        messages = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        assigned = False
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if consumer.assignment():
                    assigned = True
                if msg is not None and not msg.error():
                    messages.append(msg)
                    last = time.monotonic()
                elif assigned and len(messages) >= at_least and time.monotonic() - last > settle:
                    break
        finally:
            consumer.close()
        return messages

    def wait_for(
        self,
        suffix: str,
        predicate: Callable[[dict], bool],
        *,
        count: int = 1,
        timeout: float = 90.0,
    ) -> list[dict]:
        """Wait until ``count`` events of a topic match ``predicate``; return the matches."""
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.env["SLOCAST_KAFKA_BOOTSTRAP"],
                "group.id": f"{self.namespace}.watch-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 500,
            }
        )
        consumer.subscribe([self.topic(suffix)])
        found: list[dict] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    self._check_children()
                    continue
                try:
                    event = json.loads(msg.value())
                except (TypeError, ValueError):
                    continue
                if predicate(event):
                    found.append(event)
                    if len(found) >= count:
                        return found
        finally:
            consumer.close()
        raise AssertionError(
            f"{len(found)}/{count} matching events on {suffix} after {timeout}s; see {self.home / 'services.log'}"
        )

    def _check_children(self) -> None:
        for name, child in self.children.items():
            code = child.popen.poll()
            if code is not None and name not in getattr(self, "expected_exits", ()):
                raise AssertionError(
                    f"service {name} exited with {code}; see {self.home / 'services.log'}"
                )

    def runs(self, dataset_id: str, role: str | None = None) -> list:
        """This test's MLflow runs on a dataset (the server is shared by the session)."""
        query = (
            f"tags.`slocast.task` = '{self.task}' and tags.`slocast.dataset_id` = '{dataset_id}'"
        )
        if role:
            query += f" and tags.`slocast.role` = '{role}'"
        return self.state().runs(query)

    def registry(self):
        from slocast.adapters.registry import ModelRegistry

        return ModelRegistry(self.servers.mlflow)

    def state(self):
        from slocast.pipeline.mlflow_state import RegistryState

        return RegistryState(self.registry(), self.namespace)

    def committed_offsets(self, group_service: str) -> list[tuple[int, int]]:
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.env["SLOCAST_KAFKA_BOOTSTRAP"]})
        group = f"{self.namespace}.{group_service}"
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        result = futures[group].result()
        return [(tp.partition, tp.offset) for tp in result.topic_partitions if tp.offset >= 0]


@pytest.fixture
def stack(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServiceStack]:
    for key, value in LOCAL_S3_ENV.items():  # the test process uploads to moto too
        monkeypatch.setenv(key, value)
    services = ServiceStack(servers, tmp_path)
    try:
        yield services
    finally:
        services.stop_all()


def succeeded(stack: ServiceStack, family: str | None = None) -> Callable[[dict], bool]:
    def match(event: dict) -> bool:
        return event.get("event_type") == "training-succeeded" and (
            family is None or event["family"] == family
        )

    return match


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SERVICE_MAIN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
