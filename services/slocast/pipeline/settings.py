"""One typed settings object per service, read from the environment once at start-up.

:data:`ENV_VARS` documents every variable (name, default, meaning) and is the source
of the table in docs/services.md; :data:`SERVICE_ENV` says which service reads which
variables, so deployment manifests can be checked against it. A variable that no
service reads does not exist here (no dead knobs).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from slocast.core.errors import ConfigError
from slocast.pipeline import events


class EnvVar(NamedTuple):
    name: str
    default: str | None
    doc: str


def _vars(*items: EnvVar) -> dict[str, EnvVar]:
    return {item.name: item for item in items}


ENV_VARS: dict[str, EnvVar] = _vars(
    EnvVar(
        "SLOCAST_HOME",
        ".slocast",
        "Local state: default artifact dir, SQLite MLflow store, `slocast up` pid file and logs.",
    ),
    EnvVar(
        "SLOCAST_KAFKA_BOOTSTRAP",
        "127.0.0.1:9092",
        "Kafka bootstrap servers (host:port[,host:port]).",
    ),
    EnvVar(
        "SLOCAST_NAMESPACE",
        "slocast",
        "Prefix of every topic (`<ns>.dataset-ready`, ...) and consumer group (`<ns>.trainer-xgboost`).",
    ),
    EnvVar(
        "SLOCAST_TOPIC_PARTITIONS",
        "3",
        "Partitions of topics a service creates when they do not exist yet.",
    ),
    EnvVar(
        "SLOCAST_KAFKA_SESSION_TIMEOUT_MS",
        "6000",
        "Consumer group session timeout; heartbeats every quarter of it. Tansu joins take about half of it.",
    ),
    EnvVar(
        "SLOCAST_STORE_URI",
        None,
        "Object store for raw uploads, processed datasets and decisions: `s3://bucket/prefix` or a directory. Default `$SLOCAST_HOME/artifacts`.",
    ),
    EnvVar(
        "SLOCAST_S3_ENDPOINT_URL",
        None,
        "S3 endpoint for MinIO/moto (path-style addressing); unset for AWS S3.",
    ),
    EnvVar(
        "AWS_ACCESS_KEY_ID",
        None,
        "S3 credentials, read by boto3 (from a Secret); checked at start-up when the store is `s3://`.",
    ),
    EnvVar("AWS_SECRET_ACCESS_KEY", None, "S3 credentials, read by boto3 (from a Secret)."),
    EnvVar("AWS_DEFAULT_REGION", "us-east-1", "S3 region, read by boto3."),
    EnvVar(
        "MLFLOW_TRACKING_URI",
        None,
        "MLflow tracking server (`http://mlflow:5000`). Required by the services that use MLflow (trainer, evaluator, `slocast promote`): they refuse to start without it.",
    ),
    EnvVar(
        "SLOCAST_HEALTH_PORT",
        "8081",
        "Port of `/healthz`, `/readyz` and `/metrics` for services without their own HTTP port; 0 picks a free port.",
    ),
    EnvVar(
        "SLOCAST_HEALTH_HOST",
        "127.0.0.1",
        "Address the health port binds; a pod sets `0.0.0.0` so the kubelet's probes reach it.",
    ),
    EnvVar(
        "SLOCAST_MAX_ATTEMPTS",
        "5",
        "Attempts per message before it goes to `<topic>.dlq` (dependency outages are retried without limit and never dead-lettered).",
    ),
    EnvVar(
        "SLOCAST_RETRY_BACKOFF_SECONDS",
        "0.5",
        "First retry delay; doubles per attempt, capped at 30 s.",
    ),
    EnvVar("SLOCAST_LOG_LEVEL", "INFO", "Python log level of the service."),
    EnvVar("SLOCAST_TRAINER_FAMILY", None, "Model family of a trainer (`--family` overrides)."),
    EnvVar(
        "SLOCAST_SEED", "0", "Seed of stochastic trainers; part of the training idempotency key."
    ),
    EnvVar(
        "SLOCAST_EXPECTED_FAMILIES",
        "persistence,seasonal_naive,xgboost,gru,lstm,prophet",
        "Families the evaluator waits for before deciding.",
    ),
    EnvVar(
        "SLOCAST_EVALUATION_DEADLINE_SECONDS",
        "1800",
        "After this long since the first trainer result for a dataset, the evaluator decides with what is there and records the missing families.",
    ),
    EnvVar(
        "SLOCAST_EVALUATOR_TICK_SECONDS",
        "5",
        "How often the evaluator re-derives pending datasets from MLflow (deadlines, unpublished decisions).",
    ),
    EnvVar(
        "SLOCAST_FAULT_INJECTION",
        None,
        "Tests only: `evaluator-crash-after-promote` exits the evaluator after moving the alias and before publishing model-selected. Unset in deployments.",
    ),
    EnvVar(
        "SLOCAST_INSTANCE_ID",
        None,
        "Name of this prediction worker (default: host name); its consumer group is `<ns>.predict-<id>` so every worker sees every model-selected event.",
    ),
)

_COMMON = (
    "SLOCAST_HOME",
    "SLOCAST_KAFKA_BOOTSTRAP",
    "SLOCAST_NAMESPACE",
    "SLOCAST_TOPIC_PARTITIONS",
    "SLOCAST_KAFKA_SESSION_TIMEOUT_MS",
    "SLOCAST_STORE_URI",
    "SLOCAST_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "SLOCAST_HEALTH_PORT",
    "SLOCAST_HEALTH_HOST",
    "SLOCAST_MAX_ATTEMPTS",
    "SLOCAST_RETRY_BACKOFF_SECONDS",
    "SLOCAST_LOG_LEVEL",
)

_STORE_ONLY = (
    "SLOCAST_STORE_URI",
    "SLOCAST_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
# Read by the prediction server itself (documented in slocast.serve.settings / docs/serving.md).
_SERVE_ENV = (
    "SLOCAST_TASK",
    "SLOCAST_ADMIN_TOKEN",
    "SLOCAST_SERVE_CACHE",
    "SLOCAST_MAX_BODY_BYTES",
    "SLOCAST_MAX_BATCH_SERIES",
    "SLOCAST_MAX_HISTORY_ROWS",
    "SLOCAST_SPACING_TOLERANCE",
    "SLOCAST_REGISTRY_POLL_SECONDS",
    "SLOCAST_GENERATION_POLL_SECONDS",
)

# service name -> every environment variable it reads (for manifest checks).
SERVICE_ENV: dict[str, list[str]] = {
    "preprocess": [*_COMMON],
    "trainer": [*_COMMON, "SLOCAST_TRAINER_FAMILY", "SLOCAST_SEED"],
    "evaluator": [
        *_COMMON,
        "SLOCAST_EXPECTED_FAMILIES",
        "SLOCAST_EVALUATION_DEADLINE_SECONDS",
        "SLOCAST_EVALUATOR_TICK_SECONDS",
        "SLOCAST_FAULT_INJECTION",
    ],
    # The listener plus the prediction server it drives (slocast.serve.settings).
    "predict": [
        *[n for n in _COMMON if n not in _STORE_ONLY],
        "SLOCAST_INSTANCE_ID",
        *_SERVE_ENV,
    ],
    "submit": [
        n
        for n in _COMMON
        if n
        not in (
            "SLOCAST_HEALTH_PORT",
            "SLOCAST_HEALTH_HOST",
            "SLOCAST_MAX_ATTEMPTS",
            "SLOCAST_RETRY_BACKOFF_SECONDS",
            "SLOCAST_KAFKA_SESSION_TIMEOUT_MS",
        )
    ],
}

FAULT_EVALUATOR_AFTER_PROMOTE = "evaluator-crash-after-promote"


class _Env:
    """Typed reads from one snapshot of the environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value == "":
            return ENV_VARS[name].default
        return value

    def int(self, name: str, minimum: int = 0) -> int:
        return int(self._number(name, int, minimum))

    def float(self, name: str, minimum: float = 0.0) -> float:
        return float(self._number(name, float, minimum))

    def _number(self, name: str, kind: type, minimum: float) -> float:
        raw = self.str(name)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
        return value


@dataclass(frozen=True)
class Topics:
    """Topic names under one namespace; dead letters go to ``<topic>.dlq``."""

    namespace: str

    def name(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    @property
    def dataset_submitted(self) -> str:
        return self.name(events.DATASET_SUBMITTED)

    @property
    def dataset_ready(self) -> str:
        return self.name(events.DATASET_READY)

    @property
    def training(self) -> str:
        return self.name(events.TRAINING)

    @property
    def model_selected(self) -> str:
        return self.name(events.MODEL_SELECTED)

    @property
    def latency_samples(self) -> str:
        return self.name(events.LATENCY_SAMPLES)

    def all(self) -> list[str]:
        return [
            self.dataset_submitted,
            self.dataset_ready,
            self.training,
            self.model_selected,
            self.latency_samples,
        ]

    def group(self, service: str) -> str:
        return f"{self.namespace}.{service}"


@dataclass(frozen=True)
class CommonSettings:
    """What every service needs: broker, object store, MLflow, health port, retries."""

    home: Path
    kafka_bootstrap: str
    namespace: str
    topic_partitions: int
    session_timeout_ms: int
    store_uri: str
    s3_endpoint_url: str | None
    tracking_uri: str
    # False when MLFLOW_TRACKING_URI was unset and tracking_uri is the local SQLite default.
    mlflow_configured: bool
    health_port: int
    health_host: str
    max_attempts: int
    retry_backoff_seconds: float
    log_level: str

    @property
    def topics(self) -> Topics:
        return Topics(self.namespace)

    @property
    def uses_s3(self) -> bool:
        return self.store_uri.startswith("s3://")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CommonSettings:
        e = _Env(os.environ if env is None else env)
        home = Path(e.str("SLOCAST_HOME")).resolve()
        namespace = e.str("SLOCAST_NAMESPACE")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", namespace or ""):
            # It names topics and consumer groups and appears in MLflow filters.
            raise ConfigError(
                f"SLOCAST_NAMESPACE={namespace!r} must be a plain name (letters, digits, "
                "'_', '.', '-')"
            )
        return cls(
            home=home,
            kafka_bootstrap=e.str("SLOCAST_KAFKA_BOOTSTRAP"),
            namespace=namespace,
            topic_partitions=e.int("SLOCAST_TOPIC_PARTITIONS", 1),
            session_timeout_ms=e.int("SLOCAST_KAFKA_SESSION_TIMEOUT_MS", 1000),
            store_uri=e.str("SLOCAST_STORE_URI") or str(home / "artifacts"),
            s3_endpoint_url=e.str("SLOCAST_S3_ENDPOINT_URL"),
            tracking_uri=e.str("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
            mlflow_configured=e.str("MLFLOW_TRACKING_URI") is not None,
            health_port=e.int("SLOCAST_HEALTH_PORT"),
            health_host=e.str("SLOCAST_HEALTH_HOST"),
            max_attempts=e.int("SLOCAST_MAX_ATTEMPTS", 1),
            retry_backoff_seconds=e.float("SLOCAST_RETRY_BACKOFF_SECONDS"),
            log_level=(e.str("SLOCAST_LOG_LEVEL") or "INFO").upper(),
        )


@dataclass(frozen=True)
class TrainerSettings:
    common: CommonSettings
    family: str
    seed: int

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, family: str | None = None
    ) -> TrainerSettings:
        from slocast.models import FAMILIES

        e = _Env(os.environ if env is None else env)
        chosen = family or e.str("SLOCAST_TRAINER_FAMILY")
        if not chosen or chosen not in FAMILIES:
            raise ConfigError(
                f"trainer family {chosen!r} unknown; pass --family or SLOCAST_TRAINER_FAMILY "
                f"(one of {', '.join(FAMILIES)})"
            )
        return cls(CommonSettings.from_env(env), chosen, e.int("SLOCAST_SEED"))


@dataclass(frozen=True)
class EvaluatorSettings:
    common: CommonSettings
    expected_families: tuple[str, ...]
    deadline_seconds: float
    tick_seconds: float
    fault_injection: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EvaluatorSettings:
        e = _Env(os.environ if env is None else env)
        families = tuple(
            f.strip() for f in (e.str("SLOCAST_EXPECTED_FAMILIES") or "").split(",") if f.strip()
        )
        if "persistence" not in families:
            raise ConfigError(
                "SLOCAST_EXPECTED_FAMILIES must include persistence (the baseline every model must beat)"
            )
        fault = e.str("SLOCAST_FAULT_INJECTION")
        if fault not in (None, FAULT_EVALUATOR_AFTER_PROMOTE):
            raise ConfigError(f"SLOCAST_FAULT_INJECTION={fault!r} is not a known fault")
        return cls(
            CommonSettings.from_env(env),
            families,
            e.float("SLOCAST_EVALUATION_DEADLINE_SECONDS"),
            e.float("SLOCAST_EVALUATOR_TICK_SECONDS", 0.1),
            fault,
        )


@dataclass(frozen=True)
class ListenerSettings:
    """The model-selected listener beside a prediction server (which reads its own settings)."""

    common: CommonSettings
    instance_id: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ListenerSettings:
        e = _Env(os.environ if env is None else env)
        return cls(
            CommonSettings.from_env(env), e.str("SLOCAST_INSTANCE_ID") or socket.gethostname()
        )
