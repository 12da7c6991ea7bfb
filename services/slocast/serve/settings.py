"""Settings of the prediction server: one typed object, read once at start-up.

Every field comes from an environment variable (listed in :data:`ENVIRONMENT` and
in ``docs/serving.md``) so that the same image runs embedded and in a cluster;
``slocast serve`` flags override the listen address and worker count only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slocast.core.errors import ConfigError
from slocast.core.registry import check_task

# name -> what it sets; printed by `slocast serve --help` (docs/serving.md has the table).
ENVIRONMENT: dict[str, str] = {
    "SLOCAST_HOME": "embedded store directory (mlflow.db, mlruns/); default ./.slocast",
    "MLFLOW_TRACKING_URI": "MLflow tracking/registry URI; default sqlite:///$SLOCAST_HOME/mlflow.db",
    "SLOCAST_TASK": "registry task to serve (registered model slocast-<task>); default 'synthetic'",
    "SLOCAST_ADMIN_TOKEN": "bearer token required by POST /v1/reload; unset = no authentication",
    "SLOCAST_SERVE_CACHE": "downloaded bundles, compiled libraries and the reload generation file; "
    "default $SLOCAST_HOME/serving",
    "SLOCAST_MAX_BODY_BYTES": "largest accepted request body (413 above); default 8388608",
    "SLOCAST_MAX_BATCH_SERIES": "most series in one /v1/forecast/batch call; default 1000",
    "SLOCAST_MAX_HISTORY_ROWS": "most rows in one history; default 5000",
    "SLOCAST_SPACING_TOLERANCE": "allowed relative deviation of a history's row interval from the "
    "model's step; default 0.1 (as the dataset rules)",
    "SLOCAST_REGISTRY_POLL_SECONDS": "how often every worker checks the champion alias; 0 = never; "
    "default 30",
    "SLOCAST_GENERATION_POLL_SECONDS": "how often every worker stats the reload generation file; "
    "default 0.15",
    "SLOCAST_TREE_ENGINE": "what evaluates an XGBoost champion's trees: compiled (TL2cgen "
    "libraries, XGBoost as the counted fallback) or xgboost; default compiled",
}
TREE_ENGINES = ("compiled", "xgboost")


@dataclass(frozen=True)
class ServeSettings:
    """What one serving process needs; see :data:`ENVIRONMENT` for each field's variable."""

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
        env = os.environ if env is None else env
        home = Path(env.get("SLOCAST_HOME", ".slocast")).resolve()
        tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        cache = env.get("SLOCAST_SERVE_CACHE")
        settings = cls(
            home=home,
            tracking_uri=tracking_uri,
            task=env.get("SLOCAST_TASK", "synthetic"),
            admin_token=env.get("SLOCAST_ADMIN_TOKEN") or None,
            cache_dir=Path(cache).resolve() if cache else home / "serving",
            max_body_bytes=_int(env, "SLOCAST_MAX_BODY_BYTES", cls.max_body_bytes),
            max_batch_series=_int(env, "SLOCAST_MAX_BATCH_SERIES", cls.max_batch_series),
            max_history_rows=_int(env, "SLOCAST_MAX_HISTORY_ROWS", cls.max_history_rows),
            spacing_tolerance=_float(env, "SLOCAST_SPACING_TOLERANCE", cls.spacing_tolerance),
            registry_poll_seconds=_float(
                env, "SLOCAST_REGISTRY_POLL_SECONDS", cls.registry_poll_seconds
            ),
            generation_poll_seconds=_float(
                env, "SLOCAST_GENERATION_POLL_SECONDS", cls.generation_poll_seconds
            ),
            tree_engine=env.get("SLOCAST_TREE_ENGINE") or cls.tree_engine,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        try:
            check_task(self.task)
        except ConfigError as exc:
            raise ConfigError(f"SLOCAST_TASK: {exc}") from None
        for name in ("max_body_bytes", "max_batch_series", "max_history_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.spacing_tolerance < 0.5:
            raise ConfigError(
                f"SLOCAST_SPACING_TOLERANCE must be in [0, 0.5), got {self.spacing_tolerance}"
            )
        if self.generation_poll_seconds <= 0:
            raise ConfigError("SLOCAST_GENERATION_POLL_SECONDS must be > 0")
        if self.tree_engine not in TREE_ENGINES:
            raise ConfigError(
                f"SLOCAST_TREE_ENGINE must be one of {', '.join(TREE_ENGINES)}, "
                f"got {self.tree_engine!r}"
            )
        if self.registry_poll_seconds < 0:
            raise ConfigError("SLOCAST_REGISTRY_POLL_SECONDS must be >= 0")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
