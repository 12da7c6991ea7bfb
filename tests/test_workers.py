"""The worker supervisor (slocast.workers) behind both prediction servers' --workers.

Driven through a real 2-worker latency prediction server (it is ready in seconds:
it serves the cold-start prior without a model).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.latency.conftest import free_port, start_server, stop

from slocast import workers
from worker_connections import pids_of_connections

STARTUP_FAILURE = 3  # uvicorn's exit code for "cannot start": the supervisor keeps it


def _start(root: Path, port: int, log_name: str) -> subprocess.Popen:
    env = {
        "SLOCAST_LATENCY_HOST": "127.0.0.1",
        "SLOCAST_LATENCY_PREDICTION_PORT": str(port),
        "SLOCAST_LATENCY_MODEL_DIR": str(root / "models"),
        "SLOCAST_LATENCY_WORKERS": "2",
    }
    return start_server("latency-predictor", env, root / log_name)


def _worker_pids(url: str, want: int, process: subprocess.Popen, timeout: float = 60.0) -> set[int]:
    """Poll /status (a new connection each time) until ``want`` distinct workers answered."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            response = httpx.get(f"{url}/status", timeout=2.0)
            if response.status_code == 200:
                seen.add(response.json()["worker_pid"])
                if len(seen) >= want:
                    return seen
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{len(seen)} of {want} workers answered in {timeout}s")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead too: its parent has not reaped it yet


@pytest.fixture
def predictor(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    process = _start(tmp_path, port, "predictor.log")
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            stop(process)


def test_connections_opened_together_reach_every_worker(predictor) -> None:
    url, process = predictor
    running = _worker_pids(url, 2, process)
    pids = pids_of_connections(url, "/status", "worker_pid", busy_worker=min(running))
    # Each worker owns a SO_REUSEPORT socket and the kernel hashes connections over
    # them: all 32 on one worker has probability 2**-31. With one shared socket the
    # worker that is free takes every connection made while the other is busy.
    assert set(pids) == running, pids


def test_a_dead_worker_is_replaced_and_sigterm_stops_them_all(predictor) -> None:
    url, process = predictor
    first, second = sorted(_worker_pids(url, 2, process))
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    pids: set[int] = set()
    while time.monotonic() < deadline:
        pids = _worker_pids(url, 1, process)
        if pids - {first, second}:
            break
    replacement = (pids - {first, second}).pop()
    assert _worker_pids(url, 2, process) <= {second, replacement}

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    for pid in (second, replacement):
        assert not _alive(pid), f"worker {pid} outlived its supervisor"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/status", timeout=2.0)


def test_workers_stop_when_their_supervisor_is_killed(predictor) -> None:
    url, process = predictor
    pids = _worker_pids(url, 2, process)
    process.kill()  # SIGKILL: no chance to stop its workers itself
    process.wait(10)
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "workers outlived a killed supervisor"


def test_a_taken_port_fails_fast_even_for_another_slocast_server(predictor, tmp_path) -> None:
    url, process = predictor
    _worker_pids(url, 2, process)
    port = int(url.rsplit(":", 1)[1])
    # Same user, same SO_REUSEPORT option: without the probe bind, the kernel would
    # let this server join the first one's port and split its traffic silently.
    second = _start(tmp_path, port, "second.log")
    assert second.wait(60) == STARTUP_FAILURE
    assert "Address already in use" in (tmp_path / "second.log").read_text()

    with socket.socket() as other:  # any program holding the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        third = _start(tmp_path, other.getsockname()[1], "third.log")
        assert third.wait(60) == STARTUP_FAILURE


NOT_A_FACTORY = 42  # uvicorn cannot call it: its "cannot start" exit code


def broken_app_factory():
    raise RuntimeError("a worker that crashes while it starts")


def test_a_worker_that_cannot_start_stops_the_server() -> None:
    started = time.monotonic()
    status = workers.run("test_workers:NOT_A_FACTORY", host="127.0.0.1", port=0, workers=2)
    assert status == STARTUP_FAILURE
    assert time.monotonic() - started < 60


def test_workers_that_keep_crashing_stop_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash loop ends the supervisor (exit 1) instead of restarting forever, so a
    container restarts visibly rather than staying up and never ready."""
    # A wide "soon after its start": on a loaded machine the imports before the
    # crash must not outlast it (the supervisor would then restart forever).
    monkeypatch.setattr(workers, "_EARLY_EXIT_SECONDS", 300.0)
    status = workers.run("test_workers:broken_app_factory", host="127.0.0.1", port=0, workers=2)
    assert status == 1
