"""What every service does around its handler: checks, health port, signals, consuming.

A :class:`ServiceContext` is built once at start-up from the service's settings; the
MLflow client is created only after the tracking server answered, so a service that
starts while MLflow is down reports not-ready instead of crashing (the reference
pipeline lost its promotions exactly there).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from slocast.adapters.registry import ModelRegistry
from slocast.adapters.storage import ArtifactStore, open_store
from slocast.core.errors import ConfigError
from slocast.pipeline.health import (
    Check,
    HealthServer,
    Readiness,
    broker_check,
    credentials_check,
    mlflow_check,
    store_check,
)
from slocast.pipeline.kafka.transport import (
    DependencyUnavailable,
    EventProducer,
    RetryPolicy,
    ServiceConsumer,
    base_config,
    ensure_topics,
)
from slocast.pipeline.metrics import PipelineMetrics
from slocast.pipeline.mlflow_state import RegistryState
from slocast.settings import CommonSettings

log = logging.getLogger(__name__)


def configure_logging(service: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # A tracking-server outage should surface in seconds, not after MLflow's own
    # minutes of retries: our consumer loop retries without limit anyway.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    for noisy in ("botocore", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ServiceContext:
    def __init__(
        self,
        name: str,
        settings: CommonSettings,
        *,
        needs_mlflow: bool = True,
        needs_store: bool = True,
        report_only: dict[str, Check] | None = None,
    ) -> None:
        if needs_mlflow and not settings.mlflow_configured:
            # A private SQLite store would pass every check and promote models that no
            # prediction server or other service ever sees.
            raise ConfigError(
                f"{name}: MLFLOW_TRACKING_URI is not set; point it at the shared MLflow "
                "server (e.g. http://mlflow:5000, or `. $SLOCAST_HOME/stack/env.sh` for "
                "`slocast up`)"
            )
        self.name = name
        self.settings = settings
        self.stop = threading.Event()
        # The prediction listener never touches the store; the others cannot work without it.
        self.store: ArtifactStore = (
            open_store(settings.store_uri, endpoint_url=settings.s3_endpoint_url)
            if needs_store
            else None  # type: ignore[assignment]
        )
        self.admin = AdminClient(base_config(settings.kafka_bootstrap))
        self.producer = EventProducer(settings.kafka_bootstrap)
        checks = {
            "broker": broker_check(self.admin, poll=self.producer.poll),
            "topics": self._topics_check,
        }
        if needs_store:
            checks["credentials"] = credentials_check(settings.uses_s3)
            checks["bucket"] = store_check(self.store)
        if needs_mlflow:
            checks["mlflow"] = mlflow_check(settings.tracking_uri)
        self.readiness = Readiness(checks, report_only=report_only)
        self.metrics = PipelineMetrics(name)
        self._registry: ModelRegistry | None = None
        self._state: RegistryState | None = None
        self.health: HealthServer | None = None

    def _topics_check(self) -> str:
        ensure_topics(self.admin, self.settings.topics.all(), self.settings.topic_partitions)
        return "present"

    def start(self) -> ServiceContext:
        self.health = HealthServer(
            self.readiness,
            self.settings.health_port,
            self.settings.health_host,
            metrics=self.metrics,
        ).start()
        log.info("%s health port %d", self.name, self.health.port)
        self.readiness.start_background()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        return self

    @property
    def registry(self) -> ModelRegistry:
        """The MLflow adapter, created on first use (after the readiness checks passed)."""
        if self._registry is None:
            try:
                self._registry = ModelRegistry(self.settings.tracking_uri)
            except Exception as exc:
                raise DependencyUnavailable(
                    f"MLflow at {self.settings.tracking_uri}: {exc}"
                ) from exc
        return self._registry

    @property
    def state(self) -> RegistryState:
        if self._state is None:
            self._state = RegistryState(self.registry, self.settings.namespace)
        return self._state

    def consume(
        self,
        service: str,
        topics: list[str],
        handler: Callable[[Message], None],
        *,
        on_idle: Callable[[], None] | None = None,
        idle_interval_s: float = 5.0,
    ) -> None:
        consumer = ServiceConsumer(
            bootstrap=self.settings.kafka_bootstrap,
            group=self.settings.topics.group(service),
            topics=topics,
            handler=handler,
            producer=self.producer,
            readiness=self.readiness,
            service=service,
            retry=RetryPolicy(self.settings.max_attempts, self.settings.retry_backoff_seconds),
            session_timeout_ms=self.settings.session_timeout_ms,
            on_idle=on_idle,
            idle_interval_s=idle_interval_s,
            metrics=self.metrics,
        )
        try:
            consumer.run(self.stop)
        finally:
            self.close()

    def close(self) -> None:
        self.producer.close()
        self.readiness.stop()
        if self.health is not None:
            self.health.stop()
