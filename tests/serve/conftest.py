"""A real ``slocast serve`` to test over HTTP.

With ``SLOCAST_URL`` set the suite tests that server as a black box (e.g. as an
in-cluster Job); tests that must move the registry alias also need
``MLFLOW_TRACKING_URI`` (and ``SLOCAST_TASK``, ``SLOCAST_ADMIN_TOKEN`` as the
server has them) and are skipped without it.

Without ``SLOCAST_URL`` a session fixture (or ``SLOCAST_TEST_HOME``, a home an
earlier run kept with ``SLOCAST_KEEP_TEST_HOME=1``, to skip training) trains a small synthetic pipeline in a
temporary ``SLOCAST_HOME`` (XGBoost when that family is installed, else only the
baselines, with persistence promoted by hand because baselines never win the
promotion rule) and starts ``slocast serve --workers 2`` on a free local port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from slocast.core.schema import FEATURE_COLUMNS

SYNTHETIC_ROWS = 3000
WORKERS = 2
ADMIN_TOKEN = "serve-test-token"


@dataclass
class Server:
    url: str
    task: str
    admin_token: str | None
    tracking_uri: str | None  # None: the registry is out of reach (black-box mode)
    home: Path | None
    workers: int | None

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def registry(self):
        if self.tracking_uri is None:
            pytest.skip("needs MLFLOW_TRACKING_URI to move the champion alias")
        from slocast.adapters.registry import ModelRegistry

        return ModelRegistry(self.tracking_uri)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _xgboost_family_available() -> bool:
    try:
        from slocast.models import family_class

        family_class("xgboost")
    except (ImportError, KeyError):
        return False
    return True


def _train(home: Path) -> str:
    """Run the embedded pipeline; return the family that ends up champion."""
    models = "xgboost" if _xgboost_family_available() else ""
    env = {**os.environ, "SLOCAST_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "slocast.cli",
            "run",
            "--models",
            models,
            "--synthetic-rows",
            str(SYNTHETIC_ROWS),
            "--out",
            str(home / "out"),
            "--quiet",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    from slocast.adapters.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{home / 'mlflow.db'}")
    champion = registry.champion("synthetic")
    if champion is None:  # baselines only: promote persistence ourselves
        versions = registry.client.search_model_versions("name='slocast-synthetic'")
        persistence = next(v for v in versions if v.tags.get("slocast.family") == "persistence")
        registry.client.set_registered_model_alias(
            "slocast-synthetic", "champion", persistence.version
        )
        champion = registry.champion("synthetic")
    return champion.family


def wait_ready(
    url: str, timeout: float, process: subprocess.Popen | None = None, workers: int = 1
) -> None:
    """Until ``workers`` distinct worker processes answer /v1/model with 200.

    Each probe is a new connection, which the kernel hands to any worker's socket:
    one ready worker says nothing about the others.
    """
    deadline = time.monotonic() + timeout
    ready: set[int] = set()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"slocast serve exited with {process.returncode}")
        try:
            response = httpx.get(f"{url}/v1/model", timeout=5.0)
            if response.status_code == 200:
                ready.add(response.json()["pid"])
                if len(ready) >= workers:
                    return
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}: {len(ready)} of {workers} workers ready after {timeout}s")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    external = os.environ.get("SLOCAST_URL")
    if external:
        yield Server(
            url=external.rstrip("/"),
            task=os.environ.get("SLOCAST_TASK", "synthetic"),
            admin_token=os.environ.get("SLOCAST_ADMIN_TOKEN"),
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
            home=None,
            workers=None,
        )
        return
    reuse = os.environ.get("SLOCAST_TEST_HOME")  # a home trained by an earlier run
    home = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="slocast-serve-test-"))
    if not (reuse and (home / "mlflow.db").exists()):
        _train(home)
    port = _free_port()
    env = {
        **os.environ,
        "SLOCAST_HOME": str(home),
        "SLOCAST_TASK": "synthetic",
        "SLOCAST_ADMIN_TOKEN": ADMIN_TOKEN,
        # The registry safety-net poll is not what the reload tests exercise.
        "SLOCAST_REGISTRY_POLL_SECONDS": "300",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - closed in finally, after the server
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slocast.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 300.0, process, WORKERS)
        yield Server(
            url=url,
            task="synthetic",
            admin_token=ADMIN_TOKEN,
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
            home=home,
            workers=WORKERS,
        )
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        if reuse or os.environ.get("SLOCAST_KEEP_TEST_HOME"):
            print(f"serve test home kept at {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def model_info(server: Server) -> dict:
    with server.client() as client:
        return client.get("/v1/model").json()


@pytest.fixture(scope="session")
def make_history():
    """Turns a series' arrays into request rows."""
    return history_rows


def history_rows(times: np.ndarray, values: np.ndarray) -> list[dict]:
    """Request rows from a series' arrays (the wire format of every history)."""
    stamps = np.datetime_as_string(np.asarray(times, "datetime64[s]"), unit="s").tolist()
    return [
        {"time": t, **dict(zip(FEATURE_COLUMNS, (float(x) for x in row), strict=True))}
        for t, row in zip(stamps, np.asarray(values, np.float64).tolist(), strict=True)
    ]


@pytest.fixture(scope="session")
def synthetic_history(model_info: dict) -> list[dict]:
    """A valid history of exactly the model's length, on the model's grid."""
    from slocast.core.synthetic import generate_lte

    frame = generate_lte(400, seed=7)
    n = model_info["history_rows"] + 5
    times = frame["time"].to_numpy()[:n]
    values = frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)[:n]
    values = np.where(np.isnan(values), 0.0, values)
    return history_rows(times, values)
