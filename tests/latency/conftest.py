"""Black-box fixtures: base URLs of a training and a prediction server.

``SLOCAST_LATENCY_TRAINING_URL`` / ``SLOCAST_LATENCY_PREDICTION_URL`` point the
suite at deployed servers (e.g. the in-cluster test Job). When unset, one session
starts real servers as subprocesses on free 127.0.0.1 ports sharing a temporary
model directory, and stops them afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ADMIN_TOKEN = "test-admin-token"
PREDICTION_WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout}s")


def start_server(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slocast.cli", command],
        env={**os.environ, **env},
        stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    training = os.environ.get("SLOCAST_LATENCY_TRAINING_URL")
    prediction = os.environ.get("SLOCAST_LATENCY_PREDICTION_URL")
    if training and prediction:
        yield {
            "training": training.rstrip("/"),
            "prediction": prediction.rstrip("/"),
            "token": os.environ.get("SLOCAST_ADMIN_TOKEN", ""),
            # unknown behind a Service: served_versions polls a fixed number of times
            "workers": None,
        }
        return
    root = tmp_path_factory.mktemp("latency-servers")
    # Monotone candidates only: test_http_api checks "more load never lowers a bound".
    with server_pair(
        root, {"SLOCAST_ADMIN_TOKEN": ADMIN_TOKEN, "SLOCAST_LATENCY_MONOTONE": "true"}
    ) as urls:
        yield {**urls, "token": ADMIN_TOKEN}


@contextmanager
def server_pair(root: Path, extra_env: dict[str, str]) -> Iterator[dict]:
    """A training server and a 2-worker prediction server sharing ``root/models``."""
    env = {
        "SLOCAST_LATENCY_HOST": "127.0.0.1",
        "SLOCAST_LATENCY_MODEL_DIR": str(root / "models"),
        "SLOCAST_LATENCY_RETRAIN_INTERVAL_S": "1",
        "SLOCAST_LATENCY_MIN_NEW_SAMPLES": "200",
        "SLOCAST_LATENCY_TRAINING_PORT": str(free_port()),
        "SLOCAST_LATENCY_PREDICTION_PORT": str(free_port()),
        "SLOCAST_LATENCY_WORKERS": str(PREDICTION_WORKERS),
        **extra_env,
    }
    urls = {
        "training": f"http://127.0.0.1:{env['SLOCAST_LATENCY_TRAINING_PORT']}",
        "prediction": f"http://127.0.0.1:{env['SLOCAST_LATENCY_PREDICTION_PORT']}",
    }
    procs = [
        start_server("latency-trainer", env, root / "trainer.log"),
        start_server("latency-predictor", env, root / "predictor.log"),
    ]
    try:
        wait_healthy(urls["training"], procs[0])
        wait_healthy(urls["prediction"], procs[1])
        yield {**urls, "workers": PREDICTION_WORKERS}
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="session")
def empty_predictor(tmp_path_factory: pytest.TempPathFactory):
    """A prediction server with no model and the cold-start prior off (local runs only)."""
    if os.environ.get("SLOCAST_LATENCY_PREDICTION_URL"):
        pytest.skip("needs a prediction server without a model")
    root: Path = tmp_path_factory.mktemp("empty")
    port = free_port()
    proc = start_server(
        "latency-predictor",
        {
            "SLOCAST_LATENCY_MODEL_DIR": str(root / "models"),
            "SLOCAST_LATENCY_PREDICTION_PORT": str(port),
            "SLOCAST_LATENCY_WORKERS": "1",
            "SLOCAST_LATENCY_COLD_PRIOR": "false",
        },
        root / "log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop(proc)


def served_versions(servers: dict) -> dict[int, str | None]:
    """The trained model version each prediction worker serves (None while it serves
    the prior), by worker pid. Each status call opens a new connection, which the
    kernel hands to either worker: polling until every worker has answered is
    deterministic, where "n answers in a row agree" is not (a busy worker, e.g. one
    loading a model, accepts fewer connections and can be missed every time).
    Behind a Service (``workers`` None) the count is unknown: 16 polls, best effort."""
    versions: dict[int, str | None] = {}
    for _ in range(100 if servers["workers"] else 16):
        status = httpx.get(f"{servers['prediction']}/status").json()
        versions[status["worker_pid"]] = None if status["cold"] else status["model_version"]
        if len(versions) == servers["workers"]:
            break
    return versions
