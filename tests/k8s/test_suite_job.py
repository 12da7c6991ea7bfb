"""The test image's command (scripts/suite_job.py) against real local servers.

This is what the in-cluster Jobs run, so CI proves the Jobs' commands work without a
cluster: the stress run (headless Locust, ≤ 20 s, bounded users) meets its
thresholds against a local prediction server and latency predictor, the thresholds
do fail a run that breaks them, the bounded wait fails clearly, and the functional
suites pass when launched through the same entry point.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from k8s_render import REPO

SUITE_JOB = [sys.executable, str(REPO / "scripts" / "suite_job.py")]
ADMIN_TOKEN = "k8s-suite-token"
URL_VARS = ("SLOCAST_URL", "SLOCAST_LATENCY_TRAINING_URL", "SLOCAST_LATENCY_PREDICTION_URL")

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def wait_status(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server behind {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not 200 after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def train_champion(home: Path) -> None:
    """XGBoost champion from the embedded pipeline (or persistence, promoted by hand,
    while the XGBoost family is not installed: baselines never win the promotion rule)."""
    from slocast.models import family_class

    try:
        family_class("xgboost")
        models = "xgboost"
    except (ImportError, KeyError):
        models = ""
    subprocess.run(
        [sys.executable, "-m", "slocast.cli", "run", "--models", models]
        + ["--synthetic-rows", "3000", "--out", str(home / "out"), "--quiet"],
        env=clean_env(SLOCAST_HOME=str(home)),
        check=True,
        capture_output=True,
        timeout=600,
    )
    from slocast.adapters.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{home / 'mlflow.db'}")
    if registry.champion("synthetic") is None:
        versions = registry.client.search_model_versions("name='slocast-synthetic'")
        persistence = next(v for v in versions if v.tags.get("slocast.family") == "persistence")
        registry.client.set_registered_model_alias(
            "slocast-synthetic", "champion", persistence.version
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """A local prediction server with a champion and a latency trainer + predictor."""
    root = Path(tempfile.mkdtemp(prefix="slocast-k8s-suite-"))
    processes: list[subprocess.Popen] = []
    logs = []
    try:
        train_champion(root)
        serve_port, train_port, predict_port = free_port(), free_port(), free_port()
        env = clean_env(
            SLOCAST_HOME=str(root),
            SLOCAST_TASK="synthetic",
            SLOCAST_ADMIN_TOKEN=ADMIN_TOKEN,
            SLOCAST_LATENCY_HOST="127.0.0.1",
            SLOCAST_LATENCY_MODEL_DIR=str(root / "latency-models"),
            # as tests/latency/conftest.py starts its own servers
            SLOCAST_LATENCY_RETRAIN_INTERVAL_S="1",
            SLOCAST_LATENCY_MIN_NEW_SAMPLES="200",
            SLOCAST_LATENCY_TRAINING_PORT=str(train_port),
            SLOCAST_LATENCY_PREDICTION_PORT=str(predict_port),
            SLOCAST_LATENCY_WORKERS="2",
            SLOCAST_LATENCY_MONOTONE="true",
        )
        commands = {
            "serve": ["serve", "--host", "127.0.0.1", "--port", str(serve_port), "--workers", "1"],
            "latency-trainer": ["latency-trainer"],
            "latency-predictor": ["latency-predictor"],
        }
        for name, args in commands.items():
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "slocast.cli", *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        urls = {
            "SLOCAST_URL": f"http://127.0.0.1:{serve_port}",
            "SLOCAST_LATENCY_TRAINING_URL": f"http://127.0.0.1:{train_port}",
            "SLOCAST_LATENCY_PREDICTION_URL": f"http://127.0.0.1:{predict_port}",
        }
        wait_status(f"{urls['SLOCAST_URL']}/readyz", processes[0])
        wait_status(f"{urls['SLOCAST_LATENCY_TRAINING_URL']}/healthz", processes[1])
        wait_status(f"{urls['SLOCAST_LATENCY_PREDICTION_URL']}/healthz", processes[2])
        yield {
            **urls,
            "SLOCAST_ADMIN_TOKEN": ADMIN_TOKEN,
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "SLOCAST_TASK": "synthetic",
            "root": str(root),
        }
    finally:
        for process in processes:
            stop(process)
        for log in logs:
            log.close()
        shutil.rmtree(root, ignore_errors=True)


def run_job(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        SUITE_JOB + args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_missing_target_is_a_configuration_error():
    result = run_job(["stress", "--only", "serve"], clean_env(), timeout=60)
    assert result.returncode == 2
    assert "SLOCAST_URL" in result.stderr


def test_wait_is_bounded_and_says_what_it_waited_for():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_job(
        ["functional", "--only", "serve"],
        clean_env(SLOCAST_URL=url, SLOCAST_WAIT_TIMEOUT_SECONDS="3"),
        timeout=60,
    )
    assert result.returncode == 3
    assert "timed out after 3 s waiting for LTE prediction server" in result.stderr
    assert url in result.stderr and "no connection" in result.stderr
    assert time.monotonic() - started < 30


def _stats(prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def test_stress_job_meets_its_thresholds(stack, tmp_path):
    env = clean_env(
        **{k: v for k, v in stack.items() if k.isupper()},
        SLOCAST_STRESS_USERS="4",
        SLOCAST_STRESS_SPAWN_RATE="4",
        SLOCAST_STRESS_DURATION="15s",
        SLOCAST_STRESS_CSV=str(tmp_path / "stress"),
        SLOCAST_WAIT_TIMEOUT_SECONDS="180",
        LOCUST_MAX_FAIL_RATIO="0.01",
        LOCUST_MAX_P99_MS="1000",
    )
    result = run_job(["stress"], env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "thresholds passed" in result.stderr
    stats = _stats(tmp_path / "stress")
    for name in ("/v1/forecast", "/v1/forecast/batch", "/predict/bulk/strict"):
        assert int(stats[name]["Request Count"]) > 0, f"no {name} requests"
        assert int(stats[name]["Failure Count"]) == 0, stats[name]


def test_thresholds_fail_a_run_that_breaks_them(stack, tmp_path):
    env = clean_env(
        SLOCAST_URL=stack["SLOCAST_URL"],
        SLOCAST_STRESS_USERS="2",
        SLOCAST_STRESS_SPAWN_RATE="2",
        SLOCAST_STRESS_DURATION="3s",
        SLOCAST_STRESS_CSV=str(tmp_path / "strict"),
        LOCUST_MAX_P99_MS="0.01",
    )
    result = run_job(["stress", "--only", "serve"], env, timeout=120)
    assert result.returncode == 1
    assert "thresholds FAILED" in result.stderr and "p99" in result.stderr


@pytest.mark.slow
def test_latency_functional_suite_passes_through_the_job_command(stack):
    """tests/latency via the Job's command (the serve suite: against `slocast up` below)."""
    env = clean_env(
        **{k: v for k, v in stack.items() if k.isupper()},
        SLOCAST_WAIT_TIMEOUT_SECONDS="180",
    )
    result = run_job(["functional", "--only", "latency"], env, timeout=1500)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and " failed" not in result.stdout, tail


@pytest.fixture(scope="module")
def local_stack() -> Iterator[dict[str, str]]:
    """`slocast up` (Tansu, moto S3, MLflow server, every service) in a fresh home,
    with a synthetic LTE dataset submitted as the seed-lte-dataset Job does."""
    home = Path(tempfile.mkdtemp(prefix="slocast-k8s-up-"))
    port = free_port()
    env = clean_env(SLOCAST_HOME=str(home))
    try:
        up = subprocess.run(
            [sys.executable, "-m", "slocast.cli", "up", "--predict-port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        stack_env = dict(env)
        for line in (home / "stack" / "env.sh").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            stack_env[key] = value.strip("'")
        from slocast.core.synthetic import generate_lte

        data = home / "synthetic.csv"
        generate_lte(3000, seed=0).to_csv(data, index=False)
        submit = subprocess.run(
            [sys.executable, "-m", "slocast.cli", "submit", "--data", str(data)]
            + ["--task", "synthetic"],
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        yield {**stack_env, "SLOCAST_URL": f"http://127.0.0.1:{port}", "SLOCAST_TASK": "synthetic"}
    finally:
        subprocess.run(
            [sys.executable, "-m", "slocast.cli", "down"], env=env, capture_output=True, timeout=120
        )
        log = home / "stack" / "stack.log"
        if log.exists():
            print(log.read_text()[-5000:])
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_functional_job_command_passes_against_slocast_up(local_stack):
    """The Job's command waits (bounded) for the champion the pipeline promotes over
    Kafka, then the serve suite passes against the stack's prediction service."""
    env = {**local_stack, "SLOCAST_WAIT_TIMEOUT_SECONDS": "900"}
    result = run_job(["functional", "--only", "serve"], env, timeout=2400)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert "ready after" in result.stdout and " passed" in result.stdout, tail
