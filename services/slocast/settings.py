"""Every setting slocast reads: one typed module, each object read once at start-up.

:data:`ENV_VARS` documents every environment variable (name, default, meaning) and is
the source of the tables in docs/services.md, docs/serving.md and docs/latency.md;
:data:`SERVICE_ENV` says which workload reads which variables, so deployment
manifests can be checked against it (tests/k8s). A variable no workload reads does
not exist here (no dead knobs). :class:`Env` is the one set of typed readers, and
:func:`home_dir` the one place the local state directory (``./.slocast``) defaults.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from slocast.adapters.registry import check_task, task_from_file
from slocast.core.config import PipelineConfig
from slocast.core.errors import ConfigError
from slocast.pipeline import events


class EnvVar(NamedTuple):
    name: str
    default: str | None
    doc: str


def _vars(*items: EnvVar) -> dict[str, EnvVar]:
    return {item.name: item for item in items}


DEFAULT_HOME = ".slocast"
# Largest request body a latency server reads (413 above). A full bulk request
# (latency.schema.MAX_ITEMS = 10,000 items) is ~3.5-4.7 MB of JSON depending on spacing.
LATENCY_MAX_BODY_BYTES = 8 * 1024 * 1024
LATENCY_MIN_BODY_BYTES = 1024
# Engine choices: LTE trees (docs/serving.md "Engines"), latency forests (docs/latency.md).
TREE_ENGINES = ("compiled", "xgboost")
LATENCY_ENGINES = ("native", "xgboost")

ENV_VARS: dict[str, EnvVar] = _vars(
    # ---- shared
    EnvVar(
        "SLOCAST_HOME",
        DEFAULT_HOME,
        "Local state: embedded MLflow store, artifacts, serving cache, latency models, "
        "`slocast up` state and logs.",
    ),
    EnvVar(
        "MLFLOW_TRACKING_URI",
        None,
        "MLflow tracking server (`http://mlflow:5000`). Required by the services that use MLflow (trainer, evaluator, `slocast promote`): they refuse to start without it. `slocast run`/`serve` default to `sqlite:///$SLOCAST_HOME/mlflow.db`.",
    ),
    EnvVar(
        "SLOCAST_ADMIN_TOKEN",
        None,
        "Bearer token required by the admin endpoints (`POST /v1/reload`, latency `/flush`, `/reload`); unset = no authentication.",
    ),
    # ---- pipeline services (docs/services.md)
    EnvVar(
        "SLOCAST_KAFKA_BOOTSTRAP",
        "127.0.0.1:9092",
        "Kafka bootstrap servers (host:port[,host:port]). The latency trainer consumes its sample stream from Kafka only when this is set.",
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
    # ---- LTE prediction server (docs/serving.md)
    EnvVar(
        "SLOCAST_TASK",
        "synthetic",
        "Registry task to serve (registered model slocast-<task>).",
    ),
    EnvVar(
        "SLOCAST_SERVE_CACHE",
        None,
        "Downloaded bundles, compiled libraries and the reload generation file; default `$SLOCAST_HOME/serving`.",
    ),
    EnvVar("SLOCAST_MAX_BODY_BYTES", "8388608", "Largest accepted request body (413 above)."),
    EnvVar("SLOCAST_MAX_BATCH_SERIES", "1000", "Most series in one /v1/forecast/batch call."),
    EnvVar("SLOCAST_MAX_HISTORY_ROWS", "5000", "Most rows in one history."),
    EnvVar(
        "SLOCAST_SPACING_TOLERANCE",
        "0.1",
        "Allowed relative deviation of a history's row interval from the model's step (as the dataset rules).",
    ),
    EnvVar(
        "SLOCAST_REGISTRY_POLL_SECONDS",
        "30",
        "How often every worker checks the champion alias; 0 = never.",
    ),
    EnvVar(
        "SLOCAST_GENERATION_POLL_SECONDS",
        "0.15",
        "How often every worker stats the reload generation file.",
    ),
    EnvVar(
        "SLOCAST_TREE_ENGINE",
        "compiled",
        "What evaluates an XGBoost champion's trees: compiled (TL2cgen libraries, XGBoost as the "
        "counted fallback) or xgboost.",
    ),
    # ---- LLM latency servers (docs/latency.md)
    EnvVar("SLOCAST_LATENCY_HOST", "127.0.0.1", "Address both latency servers bind."),
    EnvVar("SLOCAST_LATENCY_TRAINING_PORT", "8000", "Training server port."),
    EnvVar("SLOCAST_LATENCY_PREDICTION_PORT", "8001", "Prediction server port."),
    EnvVar("SLOCAST_LATENCY_WORKERS", "1", "Prediction server worker processes."),
    EnvVar(
        "SLOCAST_LATENCY_MODEL_DIR",
        None,
        "Published bundles and the `CURRENT` pointer, shared by both servers; default `$SLOCAST_HOME/latency/models`.",
    ),
    EnvVar("SLOCAST_LATENCY_QUANTILE", "0.9", "Quantile the models predict (0.5-0.999)."),
    EnvVar("SLOCAST_LATENCY_RETRAIN_INTERVAL_S", "5.0", "Seconds between retrain attempts."),
    EnvVar("SLOCAST_LATENCY_MIN_NEW_SAMPLES", "100", "New samples needed before a retrain."),
    EnvVar("SLOCAST_LATENCY_MIN_TRAIN_SAMPLES", "200", "Samples needed before the first model."),
    EnvVar(
        "SLOCAST_LATENCY_WINDOW_PER_REGIME",
        "5000",
        "Samples kept per load regime (bounded window).",
    ),
    EnvVar(
        "SLOCAST_LATENCY_MONOTONE",
        "false",
        "Monotone mode: more load never lowers a prediction (drops non-monotone candidates).",
    ),
    EnvVar(
        "SLOCAST_LATENCY_QUEUE_SAMPLES",
        "200000",
        "In-process sample queue bound (samples, at least one full bulk body of 10,000).",
    ),
    EnvVar("SLOCAST_LATENCY_TOPIC", "latency-samples", "Kafka topic of the sample stream."),
    EnvVar(
        "SLOCAST_LATENCY_MAX_BODY_BYTES",
        str(LATENCY_MAX_BODY_BYTES),
        "Largest request body either latency server reads (413 above; chunked bodies included).",
    ),
    EnvVar(
        "SLOCAST_LATENCY_WATCH_INTERVAL_S",
        "0.1",
        "How often prediction workers check the `CURRENT` pointer.",
    ),
    EnvVar(
        "SLOCAST_LATENCY_ENGINE",
        "native",
        "Tree engine of the latency prediction workers: `native` (slocast._native forests; a target it cannot serve falls back to XGBoost, counted) or `xgboost` everywhere.",
    ),
    EnvVar(
        "SLOCAST_LATENCY_SYNC_URL",
        None,
        "Training server a prediction server downloads published models from (http or https), for pods without the trainer's model directory; unset = follow the shared directory only.",
    ),
    EnvVar(
        "TRAINING_SERVER_URL",
        None,
        "Upstream's name for `SLOCAST_LATENCY_SYNC_URL`, used by a prediction server when that is unset (drop-in for the upstream deployment).",
    ),
    EnvVar(
        "SLOCAST_LATENCY_SYNC_INTERVAL_S",
        "1",
        "How often a prediction server with a sync URL asks the training server for a new model (a 304 when unchanged).",
    ),
    EnvVar(
        "SLOCAST_LATENCY_COLD_PRIOR",
        "true",
        "Serve the closed-form prior (flagged cold) until the first model is published.",
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
_SERVE = (
    "SLOCAST_HOME",
    "MLFLOW_TRACKING_URI",
    "SLOCAST_TASK",
    "SLOCAST_ADMIN_TOKEN",
    "SLOCAST_SERVE_CACHE",
    "SLOCAST_MAX_BODY_BYTES",
    "SLOCAST_MAX_BATCH_SERIES",
    "SLOCAST_MAX_HISTORY_ROWS",
    "SLOCAST_SPACING_TOLERANCE",
    "SLOCAST_REGISTRY_POLL_SECONDS",
    "SLOCAST_GENERATION_POLL_SECONDS",
    "SLOCAST_TREE_ENGINE",
)
_LATENCY_TRAINER = (
    "SLOCAST_HOME",
    "SLOCAST_LATENCY_HOST",
    "SLOCAST_LATENCY_TRAINING_PORT",
    "SLOCAST_LATENCY_MODEL_DIR",
    "SLOCAST_ADMIN_TOKEN",
    "SLOCAST_LATENCY_QUANTILE",
    "SLOCAST_LATENCY_RETRAIN_INTERVAL_S",
    "SLOCAST_LATENCY_MIN_NEW_SAMPLES",
    "SLOCAST_LATENCY_MIN_TRAIN_SAMPLES",
    "SLOCAST_LATENCY_WINDOW_PER_REGIME",
    "SLOCAST_LATENCY_MONOTONE",
    "SLOCAST_LATENCY_QUEUE_SAMPLES",
    "SLOCAST_KAFKA_BOOTSTRAP",
    "SLOCAST_LATENCY_TOPIC",
    "SLOCAST_LATENCY_MAX_BODY_BYTES",
)
_LATENCY_PREDICTOR = (
    "SLOCAST_HOME",
    "SLOCAST_LATENCY_HOST",
    "SLOCAST_LATENCY_PREDICTION_PORT",
    "SLOCAST_LATENCY_WORKERS",
    "SLOCAST_LATENCY_MODEL_DIR",
    "SLOCAST_LATENCY_ENGINE",
    "SLOCAST_LATENCY_WATCH_INTERVAL_S",
    "SLOCAST_LATENCY_SYNC_URL",
    "TRAINING_SERVER_URL",
    "SLOCAST_LATENCY_SYNC_INTERVAL_S",
    "SLOCAST_LATENCY_QUANTILE",
    "SLOCAST_LATENCY_COLD_PRIOR",
    "SLOCAST_ADMIN_TOKEN",
    "SLOCAST_LATENCY_MAX_BODY_BYTES",
)

# workload (settings group) -> every environment variable it reads (manifest checks).
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
    # The listener plus the prediction server it drives.
    "predict": sorted(
        {*(n for n in _COMMON if n not in _STORE_ONLY), "SLOCAST_INSTANCE_ID", *_SERVE}
    ),
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
    "serve": [*_SERVE],
    "latency-trainer": [*_LATENCY_TRAINER],
    "latency-predictor": [*_LATENCY_PREDICTOR],
}

FAULT_EVALUATOR_AFTER_PROMOTE = "evaluator-crash-after-promote"
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


class Env:
    """Typed reads from one snapshot of the environment; defaults from :data:`ENV_VARS`."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env

    def str(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value == "":
            return ENV_VARS[name].default
        return value

    def given(self, name: str) -> str | None:
        """The value set in the environment, ignoring the documented default."""
        return self.env.get(name) or None

    def int(self, name: str, minimum: int = 0, maximum: int | None = None) -> int:
        return int(self._number(name, int, minimum, maximum))

    def float(self, name: str, minimum: float = 0.0, maximum: float | None = None) -> float:
        return float(self._number(name, float, minimum, maximum))

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        raw = (self.str(name) or "").strip().lower()
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return raw

    def bool(self, name: str) -> bool:
        raw = (self.str(name) or "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ConfigError(f"{name}={raw!r} must be true or false")
        return raw in _TRUE

    def _number(self, name: str, kind: type, minimum: float, maximum: float | None) -> float:
        raw = self.str(name)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ConfigError(f"{name}={raw!r} must be {bound}")
        return value


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    """Local state directory: ``$SLOCAST_HOME`` or ``./.slocast``, absolute."""
    return Path(Env(env).str("SLOCAST_HOME") or DEFAULT_HOME).resolve()


def _tracking_uri(e: Env, home: Path) -> str:
    return e.str("MLFLOW_TRACKING_URI") or f"sqlite:///{home.resolve() / 'mlflow.db'}"


# ---------------------------------------------------------------- pipeline services


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
    """What every pipeline service needs: broker, object store, MLflow, health port, retries."""

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
        e = Env(env)
        home = home_dir(env)
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
            tracking_uri=_tracking_uri(e, home),
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

        e = Env(env)
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
        e = Env(env)
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
    """The model-selected listener beside a prediction server (which has its own settings)."""

    common: CommonSettings
    instance_id: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ListenerSettings:
        e = Env(env)
        return cls(
            CommonSettings.from_env(env), e.str("SLOCAST_INSTANCE_ID") or socket.gethostname()
        )


# ---------------------------------------------------------------- LTE prediction server


@dataclass(frozen=True)
class ServeSettings:
    """What one LTE serving process needs (``slocast serve`` flags set host/port/workers)."""

    home: Path
    tracking_uri: str
    task: str
    admin_token: str | None
    cache_dir: Path
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_series: int = 1000
    max_history_rows: int = 5000
    spacing_tolerance: float = 0.1
    registry_poll_seconds: float = 30.0
    generation_poll_seconds: float = 0.15
    tree_engine: str = "compiled"

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def compiled_dir(self) -> Path:
        return self.cache_dir / "compiled"

    @property
    def generation_file(self) -> Path:
        return self.cache_dir / "reload-generation"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        e = Env(env)
        home = home_dir(env)
        # Set but empty is a mistake worth reporting, not "use the default".
        task = e.env.get("SLOCAST_TASK", ENV_VARS["SLOCAST_TASK"].default or "")
        try:
            check_task(task)
        except ConfigError as exc:
            raise ConfigError(f"SLOCAST_TASK: {exc}") from None
        cache = e.str("SLOCAST_SERVE_CACHE")
        spacing = e.float("SLOCAST_SPACING_TOLERANCE", 0.0, 0.499)
        tree_engine = e.choice("SLOCAST_TREE_ENGINE", TREE_ENGINES)
        return cls(
            home=home,
            tracking_uri=_tracking_uri(e, home),
            task=task,
            admin_token=e.str("SLOCAST_ADMIN_TOKEN"),
            cache_dir=Path(cache).resolve() if cache else home / "serving",
            max_body_bytes=e.int("SLOCAST_MAX_BODY_BYTES", 1),
            max_batch_series=e.int("SLOCAST_MAX_BATCH_SERIES", 1),
            max_history_rows=e.int("SLOCAST_MAX_HISTORY_ROWS", 1),
            spacing_tolerance=spacing,
            registry_poll_seconds=e.float("SLOCAST_REGISTRY_POLL_SECONDS", 0.0),
            generation_poll_seconds=e.float("SLOCAST_GENERATION_POLL_SECONDS", 0.001),
            tree_engine=tree_engine,
        )


def serve_environment() -> dict[str, str]:
    """Variable -> meaning (with its default) for ``slocast serve --help``."""
    out = {}
    for name in SERVICE_ENV["serve"]:
        var = ENV_VARS[name]
        out[name] = var.doc + (f" Default {var.default}." if var.default else "")
    return out


# ---------------------------------------------------------------- LLM latency servers


def _latency_model_dir(e: Env, env: Mapping[str, str] | None) -> Path:
    raw = e.str("SLOCAST_LATENCY_MODEL_DIR")
    return Path(raw) if raw else home_dir(env) / "latency" / "models"


@dataclass(frozen=True)
class LatencyTrainingSettings:
    host: str
    port: int
    model_dir: Path
    admin_token: str | None
    quantile: float
    retrain_interval_s: float
    min_new_samples: int
    min_train_samples: int
    window_per_regime: int
    monotone: bool
    queue_samples: int
    kafka_bootstrap: str | None
    kafka_topic: str
    max_body_bytes: int = LATENCY_MAX_BODY_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LatencyTrainingSettings:
        e = Env(env)
        return cls(
            host=e.str("SLOCAST_LATENCY_HOST"),
            port=e.int("SLOCAST_LATENCY_TRAINING_PORT", 1, 65535),
            model_dir=_latency_model_dir(e, env),
            admin_token=e.str("SLOCAST_ADMIN_TOKEN"),
            quantile=e.float("SLOCAST_LATENCY_QUANTILE", 0.5, 0.999),
            retrain_interval_s=e.float("SLOCAST_LATENCY_RETRAIN_INTERVAL_S", 0.1, 86400),
            min_new_samples=e.int("SLOCAST_LATENCY_MIN_NEW_SAMPLES", 1),
            min_train_samples=e.int("SLOCAST_LATENCY_MIN_TRAIN_SAMPLES", 20),
            window_per_regime=e.int("SLOCAST_LATENCY_WINDOW_PER_REGIME", 100),
            monotone=e.bool("SLOCAST_LATENCY_MONOTONE"),
            # Samples, not requests: 1,000 bulk bodies of 10,000 held 10M samples.
            # At least one maximal body (latency.schema.MAX_ITEMS), so it always fits.
            queue_samples=e.int("SLOCAST_LATENCY_QUEUE_SAMPLES", 10_000),
            # The latency trainer streams through Kafka only when told to.
            kafka_bootstrap=e.given("SLOCAST_KAFKA_BOOTSTRAP"),
            kafka_topic=e.str("SLOCAST_LATENCY_TOPIC"),
            max_body_bytes=e.int("SLOCAST_LATENCY_MAX_BODY_BYTES", LATENCY_MIN_BODY_BYTES),
        )


@dataclass(frozen=True)
class LatencyPredictionSettings:
    host: str
    port: int
    workers: int
    model_dir: Path
    watch_interval_s: float
    # Reported with the cold-start prior; trained bundles carry their own.
    quantile: float
    cold_prior: bool
    # ``POST /reload`` needs ``Authorization: Bearer <token>`` when set.
    admin_token: str | None = None
    max_body_bytes: int = LATENCY_MAX_BODY_BYTES
    # Tree engine (slocast.latency.native): "native", or "xgboost" everywhere.
    engine: str = "native"
    # Training server to download published models from (slocast.latency.model_sync).
    sync_url: str | None = None
    sync_interval_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LatencyPredictionSettings:
        e = Env(env)
        model_dir = _latency_model_dir(e, env)
        sync_url = _http_url(e, "SLOCAST_LATENCY_SYNC_URL") or _http_url(e, "TRAINING_SERVER_URL")
        return cls(
            host=e.str("SLOCAST_LATENCY_HOST"),
            port=e.int("SLOCAST_LATENCY_PREDICTION_PORT", 1, 65535),
            workers=e.int("SLOCAST_LATENCY_WORKERS", 1),
            model_dir=model_dir,
            watch_interval_s=e.float("SLOCAST_LATENCY_WATCH_INTERVAL_S", 0.01, 10.0),
            quantile=e.float("SLOCAST_LATENCY_QUANTILE", 0.5, 0.999),
            cold_prior=e.bool("SLOCAST_LATENCY_COLD_PRIOR"),
            admin_token=e.str("SLOCAST_ADMIN_TOKEN"),
            max_body_bytes=e.int("SLOCAST_LATENCY_MAX_BODY_BYTES", LATENCY_MIN_BODY_BYTES),
            engine=e.choice("SLOCAST_LATENCY_ENGINE", LATENCY_ENGINES),
            sync_url=sync_url,
            sync_interval_s=e.float("SLOCAST_LATENCY_SYNC_INTERVAL_S", 0.1, 3600.0),
        )


def _http_url(e: Env, name: str) -> str | None:
    """An http(s) base URL without a trailing slash, or None when unset."""
    raw = e.str(name)
    if raw is None:
        return None
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{name}={raw!r} must be an http(s) URL such as http://host:8000")
    return raw.strip().rstrip("/")


# ---------------------------------------------------------------- embedded runner


@dataclass
class RunSettings:
    """One ``slocast run`` (from its flags; only ``home`` comes from the environment).

    Attributes:
        data: training file (CSV/Parquet); None runs on the synthetic generator.
        test_data: separate test file; None splits the test set off ``data``.
        models: families to train (baselines are always evaluated too).
        out: directory for report.json / report.html.
        seed: seed of every stochastic model.
        task: registry task name; defaults to the data file's stem or "synthetic".
        home: embedded MLflow store and artifact directory.
        synthetic_rows: rows the synthetic generator makes when ``data`` is None.
        config: the pipeline configuration (window, horizon, quantiles...).
    """

    data: Path | None = None
    test_data: Path | None = None
    models: tuple[str, ...] = ("xgboost", "gru", "lstm", "prophet")
    out: Path = Path("out")
    seed: int = 0
    task: str | None = None
    home: Path = field(default_factory=home_dir)
    synthetic_rows: int = 8000
    config: PipelineConfig = field(default_factory=PipelineConfig)

    @property
    def task_name(self) -> str:
        if self.task is not None:
            return check_task(self.task)
        return "synthetic" if self.data is None else task_from_file(self.data)

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def tracking_uri(self) -> str:
        """``MLFLOW_TRACKING_URI`` when set, else the SQLite store under ``home``."""
        return _tracking_uri(Env(), self.home)
