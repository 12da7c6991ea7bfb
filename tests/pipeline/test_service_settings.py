"""Service start-up rules and the local stack's client settings file (no servers needed)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from slocast.adapters.registry import check_task, task_from_file
from slocast.core.errors import ConfigError, DatasetError, SlocastError
from slocast.core.synthetic import generate_lte
from slocast.devstack import stack
from slocast.pipeline.events import DatasetReady
from slocast.pipeline.health import HealthServer, Readiness
from slocast.pipeline.kafka.runner import ServiceContext
from slocast.pipeline.submit import promote_by_hand, submit_dataset
from slocast.settings import ENV_VARS, SERVICE_ENV, CommonSettings, RunSettings, ServeSettings


def test_service_using_mlflow_refuses_to_start_without_tracking_uri(tmp_path) -> None:
    settings = CommonSettings.from_env({"SLOCAST_HOME": str(tmp_path)})
    assert not settings.mlflow_configured
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI is not set"):
        ServiceContext("evaluator", settings)


def test_evaluator_command_exits_with_the_reason(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["SLOCAST_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "slocast.cli", "service", "evaluator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "MLFLOW_TRACKING_URI is not set" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_services_without_mlflow_start_without_it(tmp_path) -> None:
    settings = CommonSettings.from_env(
        {"SLOCAST_HOME": str(tmp_path), "SLOCAST_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    )
    ctx = ServiceContext("preprocess", settings, needs_mlflow=False)
    assert "mlflow" not in ctx.readiness.report()["checks"]


def test_every_documented_variable_is_read_by_some_service() -> None:
    read = {name for names in SERVICE_ENV.values() for name in names}
    assert set(ENV_VARS) <= read, set(ENV_VARS) - read


def test_local_storage_stack_never_writes_the_callers_keys() -> None:
    base = {"AWS_ACCESS_KEY_ID": "AKIAREALKEY", "AWS_SECRET_ACCESS_KEY": "real", "PATH": "/bin"}
    env = {**base, "SLOCAST_HOME": "/h", "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    written = stack.client_env(env, base, "local")
    assert written == {"SLOCAST_HOME": "/h", "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    # With its own S3 the stack hands out moto's placeholders, never the caller's keys.
    s3_env = {**env, **stack.LOCAL_S3_ENV}
    assert stack.client_env(s3_env, base, "s3")["AWS_ACCESS_KEY_ID"] == "local-stack"


def test_env_file_is_owner_only_quoted_and_removed_on_down(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOCAST_HOME", str(tmp_path))
    directory = stack.stack_dir()
    directory.mkdir(parents=True)
    (directory / "env.sh").write_text("old")
    os.chmod(directory / "env.sh", 0o644)
    stack._write_env(directory / "env.sh", {"SLOCAST_HOME": "/a b", "X": "it's"})
    mode = stat.S_IMODE((directory / "env.sh").stat().st_mode)
    assert mode == 0o600
    sourced = subprocess.run(
        ["bash", "-c", f'. {directory / "env.sh"}; printf "%s|%s" "$SLOCAST_HOME" "$X"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sourced.stdout == "/a b|it's"
    # A supervisor that died without cleaning up: `down` still removes its files.
    (directory / "pid").write_text("999999999")
    (directory / "ready").write_text("1")
    assert stack.stack_down() == 0
    assert not any((directory / n).exists() for n in ("pid", "ready", "env.sh"))


@pytest.mark.parametrize("task", ["", "a b", "x' OR '1'='1", "-lead", "a/b", "t" * 101])
def test_task_names_that_could_break_a_registry_filter_are_refused(task: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match="task name"):
        check_task(task)
    with pytest.raises(ConfigError, match="SLOCAST_TASK"):
        ServeSettings.from_env({"SLOCAST_HOME": str(tmp_path), "SLOCAST_TASK": task})
    with pytest.raises(ConfigError, match="task name"):
        RunSettings(task=task).task_name  # noqa: B018 (the property validates)
    with pytest.raises(ValidationError):
        DatasetReady(
            producer="t",
            task=task,
            dataset_id="0" * 64,
            dataset_uri="s3://b/k",
            metadata_sha256="0" * 64,
            train_windows=1,
            test_windows=1,
        )


def test_default_task_from_a_file_name_is_made_safe() -> None:
    assert RunSettings(data=Path("PobleSec.csv")).task_name == "PobleSec"
    assert RunSettings(data=Path("Les Corts (2).csv")).task_name == "Les_Corts__2_"
    assert task_from_file(Path("_x'.parquet")) == "t_x_"


def test_submit_and_promote_refuse_bad_names_before_touching_anything(tmp_path) -> None:
    settings = CommonSettings.from_env({"SLOCAST_HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="task name"):
        submit_dataset(settings, tmp_path / "missing.csv", task="a'b")
    with pytest.raises(ConfigError, match="not a dataset id"):
        promote_by_hand("abc' OR '1'='1")
    assert not any(tmp_path.iterdir())


def test_submit_refuses_what_the_preprocess_service_would_before_uploading(tmp_path) -> None:
    """The preprocess service sends a dataset it refuses to the DLQ for good; `slocast
    submit` runs the same checks first, so the user hears it and nothing is uploaded."""
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir()
    settings = CommonSettings.from_env(
        {"SLOCAST_HOME": str(home), "SLOCAST_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    )
    train = generate_lte(1500, seed=1)
    train.to_csv(data / "Cell.csv", index=False)
    test = generate_lte(300, seed=2)
    test["time"] = train["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 301) * 600, "s")
    test.to_csv(data / "Cell_test.csv", index=False)
    with pytest.raises(DatasetError, match="Cell_test.csv: test file step 600s differs"):
        submit_dataset(settings, data / "Cell.csv", data / "Cell_test.csv")
    short = test.iloc[:50].copy()
    short["time"] = train["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 51) * 120, "s")
    short.to_csv(data / "Cell_test.csv", index=False)
    with pytest.raises(DatasetError, match="gives 40 test window"):
        submit_dataset(settings, data / "Cell.csv", data / "Cell_test.csv")
    assert not home.exists() or not any(home.rglob("*.csv"))
    # A valid dataset with no broker listening: one clear error, nothing uploaded
    # (a hostile probe got a raw KafkaException after the files were uploaded).
    test = test.iloc[:300].copy()
    test["time"] = train["time"].iloc[-1] + pd.to_timedelta(np.arange(1, 301) * 120, "s")
    test.to_csv(data / "Cell_test.csv", index=False)
    with pytest.raises(
        SlocastError, match="cannot reach Kafka at 127.0.0.1:9.*nothing was uploaded"
    ):
        submit_dataset(settings, data / "Cell.csv", data / "Cell_test.csv")
    assert not home.exists() or not any(home.rglob("*.csv"))


def test_health_port_binds_where_it_is_told(tmp_path) -> None:
    assert CommonSettings.from_env({}).health_host == "127.0.0.1"
    told = CommonSettings.from_env({"SLOCAST_HEALTH_HOST": "0.0.0.0", "SLOCAST_HEALTH_PORT": "0"})
    assert told.health_host == "0.0.0.0"
    server = HealthServer(Readiness({}), 0, "127.0.0.1").start()
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.stop()
