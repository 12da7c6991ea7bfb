"""The prediction service is ready only when its server has a model loaded."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import uvicorn

from slocast.pipeline.health import Readiness, served_model_check
from slocast.pipeline.prediction_listener import listener_context, server_url_for
from slocast.serve.app import create_app
from slocast.settings import ListenerSettings, ServeSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_retrying_mlflow(tmp_path):
    """The real LTE prediction server with its MLflow down (a closed port): it keeps
    retrying the champion load and its /readyz is 503."""
    settings = ServeSettings.from_env(
        {
            "SLOCAST_HOME": str(tmp_path),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "SLOCAST_TASK": "cell",
        }
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(10)


def test_listener_is_not_ready_while_its_server_has_no_model(server_retrying_mlflow) -> None:
    with pytest.raises(urllib.error.HTTPError) as served:
        urllib.request.urlopen(server_retrying_mlflow + "/readyz", timeout=5)
    assert served.value.code == 503

    readiness = Readiness(
        {"broker": lambda: "1 broker(s)"},
        report_only={"model": served_model_check(server_retrying_mlflow)},
    )
    readiness.start_background()
    try:
        time.sleep(1.5)
        report = readiness.report()
        assert report["ready"] is False
        assert report["checks"]["broker"]["ok"]
        assert not report["checks"]["model"]["ok"]
        assert "503" in report["checks"]["model"]["detail"]
        # ... but the listener still consumes: a model-selected event is what loads the model.
        assert readiness.wait_ready(threading.Event()) is True
    finally:
        readiness.stop()


def test_listener_is_ready_once_its_server_serves_a_model() -> None:
    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"status": "ready", "version": "7"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    stand_in = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    try:
        check = served_model_check(f"http://127.0.0.1:{stand_in.server_address[1]}")
        assert check() == "model version 7 loaded"
    finally:
        stand_in.shutdown()
        stand_in.server_close()


def test_predict_service_reports_its_server_model(tmp_path) -> None:
    settings = ListenerSettings.from_env(
        {
            "SLOCAST_HOME": str(tmp_path),
            "SLOCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "SLOCAST_NAMESPACE": "ns",
            "SLOCAST_TOPIC_PARTITIONS": "1",
            "SLOCAST_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SLOCAST_HEALTH_PORT": "0",
            "SLOCAST_HEALTH_HOST": "127.0.0.1",
            "SLOCAST_MAX_ATTEMPTS": "2",
            "SLOCAST_RETRY_BACKOFF_SECONDS": "0.1",
            "SLOCAST_INSTANCE_ID": "p-0",
        }
    )
    assert server_url_for("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    ctx = listener_context(settings, server_url_for("0.0.0.0", free_port()))
    try:
        assert set(ctx.readiness.checks) == {"broker", "topics"}
        assert set(ctx.readiness.report_only) == {"model"}
        assert "model" in ctx.readiness.report()["checks"]
    finally:
        ctx.producer._producer.flush(0)
