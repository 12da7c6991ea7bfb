"""One typed settings object per latency server, read from the environment once.

Every variable is documented in docs/latency.md. Both servers share
``SLOCAST_LATENCY_MODEL_DIR``: the trainer publishes bundles there and every
prediction worker follows its pointer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slocast.core.errors import ConfigError
from slocast.latency.native import ENGINE_NATIVE, ENGINES

DEFAULT_MODEL_DIR = ".slocast/latency/models"
# Largest request body either server reads (413 above). A full bulk request
# (schema.MAX_ITEMS = 10,000 items) is ~3.5-4.7 MB of JSON depending on spacing.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MIN_MAX_BODY_BYTES = 1024


def _get(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = _get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(name: str, default: float, low: float, high: float) -> float:
    raw = _get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _get(name, default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _bool(name: str, default: bool) -> bool:
    raw = _get(name, "true" if default else "false").strip().lower()
    if raw not in {"1", "0", "true", "false", "yes", "no"}:
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw in {"1", "true", "yes"}


@dataclass(frozen=True)
class TrainingSettings:
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
    queue_batches: int
    kafka_bootstrap: str | None
    kafka_topic: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def from_env(cls) -> TrainingSettings:
        return cls(
            host=_get("SLOCAST_LATENCY_HOST", "127.0.0.1"),
            port=_int("SLOCAST_LATENCY_TRAINING_PORT", 8000, 1),
            model_dir=Path(_get("SLOCAST_LATENCY_MODEL_DIR", DEFAULT_MODEL_DIR)),
            admin_token=_get("SLOCAST_ADMIN_TOKEN", "") or None,
            quantile=_float("SLOCAST_LATENCY_QUANTILE", 0.9, 0.5, 0.999),
            retrain_interval_s=_float("SLOCAST_LATENCY_RETRAIN_INTERVAL_S", 5.0, 0.1, 86400),
            min_new_samples=_int("SLOCAST_LATENCY_MIN_NEW_SAMPLES", 100, 1),
            min_train_samples=_int("SLOCAST_LATENCY_MIN_TRAIN_SAMPLES", 200, 20),
            window_per_regime=_int("SLOCAST_LATENCY_WINDOW_PER_REGIME", 5000, 100),
            monotone=_bool("SLOCAST_LATENCY_MONOTONE", False),
            queue_batches=_int("SLOCAST_LATENCY_QUEUE_BATCHES", 1000, 1),
            kafka_bootstrap=_get("SLOCAST_KAFKA_BOOTSTRAP", "") or None,
            kafka_topic=_get("SLOCAST_LATENCY_TOPIC", "latency-samples"),
            max_body_bytes=_int(
                "SLOCAST_LATENCY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, MIN_MAX_BODY_BYTES
            ),
        )


@dataclass(frozen=True)
class PredictionSettings:
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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Tree engine (slocast.latency.native): "native", or "xgboost" everywhere.
    engine: str = ENGINE_NATIVE

    @classmethod
    def from_env(cls) -> PredictionSettings:
        model_dir = Path(_get("SLOCAST_LATENCY_MODEL_DIR", DEFAULT_MODEL_DIR))
        return cls(
            host=_get("SLOCAST_LATENCY_HOST", "127.0.0.1"),
            port=_int("SLOCAST_LATENCY_PREDICTION_PORT", 8001, 1),
            workers=_int("SLOCAST_LATENCY_WORKERS", 1, 1),
            model_dir=model_dir,
            watch_interval_s=_float("SLOCAST_LATENCY_WATCH_INTERVAL_S", 0.1, 0.01, 10.0),
            quantile=_float("SLOCAST_LATENCY_QUANTILE", 0.9, 0.5, 0.999),
            cold_prior=_bool("SLOCAST_LATENCY_COLD_PRIOR", True),
            admin_token=_get("SLOCAST_ADMIN_TOKEN", "") or None,
            max_body_bytes=_int(
                "SLOCAST_LATENCY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, MIN_MAX_BODY_BYTES
            ),
            engine=_choice("SLOCAST_LATENCY_ENGINE", ENGINE_NATIVE, ENGINES),
        )
