"""Outages: bounded logs while a dependency is down, and a /readyz that notices fast."""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slocast.pipeline.health import Readiness, mlflow_check
from slocast.pipeline.kafka.runner import ServiceContext
from slocast.settings import CommonSettings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_lines():
    handler = Lines()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


def test_a_service_with_its_broker_down_logs_a_handful_of_lines(tmp_path, capfd, log_lines) -> None:
    """librdkafka reconnect failures and 'not ready' warnings for 5 s: a few lines, not a
    flood (it was ~1 'Connect to ... failed' line per client per second on stderr)."""
    settings = CommonSettings.from_env(
        {
            "SLOCAST_HOME": str(tmp_path),
            "SLOCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",
            "SLOCAST_NAMESPACE": "outage",
            "SLOCAST_TOPIC_PARTITIONS": "1",
            "SLOCAST_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SLOCAST_HEALTH_PORT": "0",
            "SLOCAST_HEALTH_HOST": "127.0.0.1",
            "SLOCAST_MAX_ATTEMPTS": "2",
            "SLOCAST_RETRY_BACKOFF_SECONDS": "0.1",
        }
    )
    ctx = ServiceContext("outage-test", settings, needs_mlflow=False)
    stop = threading.Event()
    waiter = threading.Thread(
        target=ctx.readiness.wait_ready, args=(stop,), kwargs={"max_delay": 0.5}, daemon=True
    )
    try:
        ctx.readiness.start_background()
        waiter.start()
        time.sleep(5)
        assert not ctx.readiness.ready
    finally:
        stop.set()
        ctx.readiness.stop()
    stderr = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    logged = [r for r in log_lines.records if r.levelno >= logging.WARNING]
    text = "\n".join([*stderr, *(r.getMessage() for r in logged)])
    assert "Connect to" in text or "not ready" in text  # the outage is reported ...
    assert len(stderr) + len(logged) < 6, text  # ... once, not every reconnect


def test_readyz_turns_503_within_2_s_of_a_dependency_hanging_or_dying() -> None:
    """A stand-in MLflow answers /health, then hangs (accepts, never replies), then dies."""
    hang = threading.Event()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if hang.is_set():
                time.sleep(5)
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    readiness = Readiness({"mlflow": mlflow_check(f"http://127.0.0.1:{server.server_address[1]}")})
    readiness.start_background()
    try:
        deadline = time.monotonic() + 5
        while not readiness.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert readiness.ready

        def seconds_until_not_ready() -> float:
            started = time.monotonic()
            while readiness.ready and time.monotonic() - started < 10:
                time.sleep(0.05)
            return time.monotonic() - started

        hang.set()
        assert seconds_until_not_ready() < 2.5
        assert "no answer" in readiness.report()["checks"]["mlflow"]["detail"]

        hang.clear()
        deadline = time.monotonic() + 8
        while not readiness.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert readiness.ready

        server.shutdown()
        server.server_close()  # the port is closed: connection refused
        assert seconds_until_not_ready() < 2.5
    finally:
        readiness.stop()


def test_a_repeated_error_is_logged_once_per_window_with_a_count(log_lines) -> None:
    """The evaluator tick failing every 5 s: one traceback, then a count per minute."""
    from slocast.pipeline.logthrottle import LogThrottle

    now = [0.0]
    throttle = LogThrottle(60, clock=lambda: now[0])
    log = logging.getLogger("slocast.test.tick")
    for tick in range(25):  # two minutes of ticks, every 5 s
        now[0] = tick * 5.0
        try:
            raise ConnectionError(f"MLflow down (object at 0x7f{tick:04x}, attempt {tick})")
        except ConnectionError as exc:
            throttle.log(log, logging.ERROR, "periodic task failed: %s", exc, exc_info=exc)
    lines = [r for r in log_lines.records if r.name == "slocast.test.tick"]
    assert [r.exc_info is not None for r in lines] == [True, False, False]
    assert "repeated" not in lines[0].getMessage()
    assert lines[1].getMessage().endswith("(repeated 11 times in the last 60 s)")
    assert lines[2].getMessage().endswith("(repeated 11 times in the last 60 s)")
    # a different error is not hidden by the first
    throttle.log(log, logging.ERROR, "periodic task failed: %s", "S3 bucket gone")
    assert log_lines.records[-1].getMessage() == "periodic task failed: S3 bucket gone"
