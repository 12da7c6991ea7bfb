"""Every variable of the one settings module is documented, and each workload's
variables exist there (the manifests check in tests/k8s relies on SERVICE_ENV)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slocast.core.errors import ConfigError
from slocast.settings import (
    ENV_VARS,
    SERVICE_ENV,
    Env,
    LatencyPredictionSettings,
    ServeSettings,
    home_dir,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_variable_is_documented() -> None:
    text = "\n".join(
        (DOCS / name).read_text() for name in ("services.md", "serving.md", "latency.md")
    )
    assert not [name for name in ENV_VARS if f"`{name}`" not in text]


def test_every_workload_reads_declared_variables() -> None:
    for workload, names in SERVICE_ENV.items():
        assert set(names) <= set(ENV_VARS), workload


def test_one_home_default(tmp_path: Path) -> None:
    env = {"SLOCAST_HOME": str(tmp_path)}
    assert home_dir(env) == tmp_path.resolve()
    assert ServeSettings.from_env(env).cache_dir == tmp_path.resolve() / "serving"
    assert (
        LatencyPredictionSettings.from_env(env).model_dir
        == tmp_path.resolve() / "latency" / "models"
    )
    assert home_dir({}).name == ".slocast"


def test_typed_reads_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="SLOCAST_LATENCY_WORKERS='two'"):
        Env({"SLOCAST_LATENCY_WORKERS": "two"}).int("SLOCAST_LATENCY_WORKERS", 1)
    with pytest.raises(
        ConfigError, match=r"SLOCAST_LATENCY_QUANTILE='1.5' must be in \[0.5, 0.999\]"
    ):
        LatencyPredictionSettings.from_env({"SLOCAST_LATENCY_QUANTILE": "1.5"})
    with pytest.raises(
        ConfigError, match="SLOCAST_LATENCY_ENGINE='gpu' must be one of native, xgboost"
    ):
        LatencyPredictionSettings.from_env({"SLOCAST_LATENCY_ENGINE": "gpu"})
    with pytest.raises(ConfigError, match="true or false"):
        Env({"SLOCAST_LATENCY_COLD_PRIOR": "maybe"}).bool("SLOCAST_LATENCY_COLD_PRIOR")
