"""Start-up checks and a small ``/healthz`` + ``/readyz`` (+ ``/metrics``) port for
non-HTTP services.

A service is *live* while its process runs and *ready* when every dependency check
passes (broker, bucket, MLflow, credentials). Consumers only poll while ready, so a
service never takes a message it cannot process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

# A check returns a short detail when healthy and raises when not.
Check = Callable[[], str]


class Readiness:
    """The latest result of every check; re-run on demand and by :meth:`start_background`."""

    def __init__(self, checks: dict[str, Check]) -> None:
        self.checks = dict(checks)
        self._lock = threading.Lock()
        self._results: dict[str, tuple[bool, str]] = {n: (False, "not checked yet") for n in checks}
        self._stop = threading.Event()

    def run_checks(self) -> bool:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = (True, check())
            except Exception as exc:  # any failure means "not ready", with the reason
                results[name] = (False, f"{type(exc).__name__}: {exc}"[:500])
        with self._lock:
            self._results = results
        return all(ok for ok, _ in results.values())

    def mark_unavailable(self, name: str, detail: str) -> None:
        with self._lock:
            self._results[name] = (False, detail[:500])

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(ok for ok, _ in self._results.values())

    def report(self) -> dict:
        with self._lock:
            checks = {n: {"ok": ok, "detail": d} for n, (ok, d) in self._results.items()}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    def wait_ready(self, stop: threading.Event, *, max_delay: float = 5.0) -> bool:
        """Block until every check passes (True) or ``stop`` is set (False)."""
        delay = 0.25
        last_log = 0.0
        while not stop.is_set():
            if self.run_checks():
                return True
            if time.monotonic() - last_log > 10:
                failing = {
                    n: c["detail"] for n, c in self.report()["checks"].items() if not c["ok"]
                }
                log.warning("not ready, waiting: %s", failing)
                last_log = time.monotonic()
            stop.wait(delay)
            delay = min(delay * 2, max_delay)
        return False

    def start_background(self, interval: float = 5.0) -> None:
        """Keep ``/readyz`` current while the consumer is busy."""

        def loop() -> None:
            while not self._stop.wait(interval):
                self.run_checks()

        threading.Thread(target=loop, name="readiness", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class HealthServer:
    """``GET /healthz`` (process alive), ``GET /readyz`` (JSON of every check) and, when
    given metrics (an object with ``render() -> bytes`` and ``content_type``),
    ``GET /metrics`` in the Prometheus text format."""

    def __init__(self, readiness: Readiness, port: int, host: str, metrics=None) -> None:
        handler = _handler(readiness, metrics)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def start(self) -> HealthServer:
        threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(readiness: Readiness, metrics=None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self._send(200, {"status": "ok"})
            elif self.path == "/readyz":
                report = readiness.report()
                self._send(200 if report["ready"] else 503, report)
            elif self.path == "/metrics" and metrics is not None:
                self._send_bytes(200, metrics.render(), metrics.content_type)
            else:
                self._send(404, {"detail": "not found"})

        def _send(self, status: int, body: dict) -> None:
            self._send_bytes(status, json.dumps(body).encode(), "application/json")

        def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # probes are noise
            pass

    return Handler


# --- checks -----------------------------------------------------------------------
def broker_check(admin) -> Check:
    """The broker answers a metadata request."""

    def check() -> str:
        metadata = admin.list_topics(timeout=3)
        return f"{len(metadata.brokers)} broker(s)"

    return check


def mlflow_check(tracking_uri: str) -> Check:
    """The tracking server answers ``/health`` (or the local store's directory exists)."""

    def check() -> str:
        if tracking_uri.startswith(("http://", "https://")):
            url = tracking_uri.rstrip("/") + "/health"
            try:
                with urllib.request.urlopen(url, timeout=3) as response:
                    return f"{url} {response.status}"
            except urllib.error.URLError as exc:
                raise ConnectionError(f"{url}: {exc.reason}") from None
        if tracking_uri.startswith("sqlite:///"):
            directory = Path(tracking_uri.removeprefix("sqlite:///")).parent
            directory.mkdir(parents=True, exist_ok=True)
            return f"local store in {directory}"
        return tracking_uri

    return check


def store_check(store) -> Check:
    """The bucket exists and our credentials can reach it (or the directory is writable)."""

    def check() -> str:
        client = getattr(store, "client", None)
        if client is not None:
            client.head_bucket(Bucket=store.bucket)
            return f"s3://{store.bucket} reachable"
        root = Path(store.root)
        if not os.access(root, os.W_OK):
            raise PermissionError(f"{root} is not writable")
        return f"{root} writable"

    return check


def credentials_check(uses_s3: bool) -> Check:
    """S3 credentials resolve (env, profile or workload identity); the bucket check proves them."""

    def check() -> str:
        if not uses_s3:
            return "not needed (local store)"
        import boto3

        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise PermissionError(
                "no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return f"from {credentials.method}"

    return check
