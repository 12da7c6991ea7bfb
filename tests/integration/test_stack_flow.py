"""The README's services flow, as a user runs it: `slocast up`, submit PobleSec, forecast.

Then what a user hits next: a crashed service is restarted and shown in `slocast
status`; `down` leaves no client settings; `up` again serves the same champion (its
registry and objects persisted); a stack over state it could not serve refuses to
start and says how to go on.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slocast.core.schema import FEATURE_COLUMNS
from slocast.devstack.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def slocast(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLOCAST_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "slocast.cli", *args],
        env={**base, "SLOCAST_HOME": str(home), **(env or {})},
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client_env(home: Path) -> dict[str, str]:
    """What `. $SLOCAST_HOME/stack/env.sh` exports."""
    out = {}
    for line in (home / "stack" / "env.sh").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = shlex.split(value)[0]
    return out


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for_model(port: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, info = get_json(f"http://127.0.0.1:{port}/v1/model")
        except OSError:
            status, info = 0, {}
        if status == 200:
            return info
        assert time.monotonic() < deadline, f"no model served after {timeout}s: {info}"
        time.sleep(2)


def forecast(port: int, test_file: Path, rows: int) -> dict:
    frame = pd.read_csv(test_file).tail(rows)
    stamps = pd.to_datetime(frame["time"]).dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    values = frame[list(FEATURE_COLUMNS)].to_numpy(np.float64).tolist()
    history = [
        {"time": t, **dict(zip(FEATURE_COLUMNS, row, strict=True))}
        for t, row in zip(stamps, values, strict=True)
    ]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/forecast",
        data=json.dumps({"history": history}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def wait_status(home: Path, check, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads((home / "stack" / "status.json").read_text())
        if check(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_readme_flow_then_crash_restart_and_persistence(tmp_path: Path, lte_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    up = ("up", "--task", "PobleSec", "--predict-port", str(port))
    started = slocast(home, *up)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "serves task 'PobleSec'" in started.stdout
    try:
        env = client_env(home)
        assert "AWS_ACCESS_KEY_ID" not in env  # local storage: no keys, never the caller's
        submitted = slocast(
            home,
            "submit",
            "--data",
            str(lte_dir / "PobleSec.csv"),
            "--test-data",
            str(lte_dir / "PobleSec_test.csv"),
            env=env,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        info = wait_for_model(port, timeout=900)
        assert info["task"] == "PobleSec"
        body = forecast(port, lte_dir / "PobleSec_test.csv", info["history_rows"])
        assert body["model"]["version"] == info["version"]

        # A SIGKILLed service comes back (with backoff) and `slocast status` says so.
        status = json.loads((home / "stack" / "status.json").read_text())
        os.kill(status["children"]["evaluator"]["pid"], signal.SIGKILL)
        wait_status(
            home,
            lambda s: (
                s["children"]["evaluator"]["restarts"] == 1
                and s["children"]["evaluator"]["running"]
            ),
        )
        shown = slocast(home, "status")
        assert shown.returncode == 0, shown.stdout
        assert "evaluator" in shown.stdout and "restarts 1" in shown.stdout
    finally:
        down = slocast(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (home / "stack" / "env.sh").exists()
    assert slocast(home, "status").returncode == 3

    # Up again: the registry and the objects persisted, so the champion serves at once.
    again = slocast(home, *up)
    assert again.returncode == 0, again.stdout + again.stderr
    try:
        assert wait_for_model(port, timeout=180)["version"] == info["version"]
    finally:
        assert slocast(home, "down").returncode == 0

    # moto keeps objects in memory: over this registry it would serve nothing.
    refused = slocast(home, "up", "--storage", "s3", "--predict-port", str(port))
    assert refused.returncode != 0
    assert "--fresh" in refused.stderr and "--storage local" in refused.stderr
