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

from slocast.pipeline.logthrottle import OUTAGES

log = logging.getLogger(__name__)

# A check returns a short detail when healthy and raises when not.
Check = Callable[[], str]


CHECK_INTERVAL_S = 1.0
# A check still running after this long counts as failing: a dead broker or a hung
# MLflow shows up on /readyz within CHECK_INTERVAL_S + CHECK_TIMEOUT_S, not after the
# client's own timeout (list_topics 3-10 s, urlopen 3 s, boto3 retries).
CHECK_TIMEOUT_S = 1.0


class Readiness:
    """The latest result of every check; re-run on demand and by :meth:`start_background`.

    ``checks`` gate consuming (:meth:`wait_ready`) and ``/readyz``; ``report_only``
    checks only ``/readyz`` (the prediction listener must keep delivering reloads while
    the server it reports on has no model yet).
    """

    def __init__(
        self,
        checks: dict[str, Check],
        *,
        report_only: dict[str, Check] | None = None,
        check_timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.checks = dict(checks)
        self.report_only = dict(report_only or {})
        self.check_timeout_s = check_timeout_s
        self._lock = threading.Lock()
        names = [*self.checks, *self.report_only]
        self._results: dict[str, tuple[bool, str]] = {n: (False, "not checked yet") for n in names}
        self._running_since: dict[str, float] = {}
        self._completed_at: dict[str, float] = {}
        # Failures seen by the consumer (name -> (detail, when)); they hold until every
        # gating check has passed again after them.
        self._marks: dict[str, tuple[str, float]] = {}
        self._stop = threading.Event()

    def _run_one(self, name: str, check: Check) -> bool:
        with self._lock:
            self._running_since[name] = time.monotonic()
        try:
            result = (True, check())
        except Exception as exc:  # any failure means "not ready", with the reason
            result = (False, f"{type(exc).__name__}: {exc}"[:500])
        with self._lock:
            self._results[name] = result
            self._running_since.pop(name, None)
            self._completed_at[name] = time.monotonic()
        return result[0]

    def run_checks(self) -> bool:
        """Run every gating check now; True when all pass."""
        return all([self._run_one(name, check) for name, check in self.checks.items()])

    def mark_unavailable(self, name: str, detail: str) -> None:
        with self._lock:
            self._marks[name] = (detail[:500], time.monotonic())

    def _current(self) -> dict[str, tuple[bool, str]]:
        now = time.monotonic()
        with self._lock:
            current = dict(self._results)
            for name, since in self._running_since.items():
                if now - since > self.check_timeout_s:
                    ok, detail = current[name]
                    current[name] = (
                        False,
                        f"no answer for {now - since:.1f} s (last result: {detail})"[:500],
                    )
            for name, (detail, at) in list(self._marks.items()):
                if all(self._completed_at.get(n, float("-inf")) > at for n in self.checks):
                    del self._marks[name]  # every check passed (or failed itself) since
                elif name not in current or current[name][0]:
                    current[name] = (False, detail)
        return current

    @property
    def ready(self) -> bool:
        return all(ok for ok, _ in self._current().values())

    def report(self) -> dict:
        checks = {n: {"ok": ok, "detail": d} for n, (ok, d) in self._current().items()}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    def wait_ready(self, stop: threading.Event, *, max_delay: float = 5.0) -> bool:
        """Block until every gating check passes (True) or ``stop`` is set (False)."""
        delay = 0.25
        while not stop.is_set():
            if self.run_checks():
                return True
            failing = {n: c["detail"] for n, c in self.report()["checks"].items() if not c["ok"]}
            OUTAGES.log(log, logging.WARNING, "not ready, waiting: %s", failing)
            stop.wait(delay)
            delay = min(delay * 2, max_delay)
        return False

    def start_background(self, interval: float = CHECK_INTERVAL_S) -> None:
        """Keep ``/readyz`` current while the consumer is busy: every check in a thread
        of its own, so one hung dependency neither delays nor hides the others."""

        def loop(name: str, check: Check) -> None:
            while not self._stop.is_set():
                self._run_one(name, check)
                self._stop.wait(interval)

        for name, check in {**self.checks, **self.report_only}.items():
            threading.Thread(
                target=loop, args=(name, check), name=f"readiness-{name}", daemon=True
            ).start()

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
def broker_check(admin, *, poll: Callable[[], object] | None = None) -> Check:
    """The broker answers a metadata request. Also polls the admin client (and ``poll``,
    the producer's) so librdkafka's queued log lines are emitted while the service idles."""

    def check() -> str:
        admin.poll(0)
        if poll is not None:
            poll()
        metadata = admin.list_topics(timeout=3)
        return f"{len(metadata.brokers)} broker(s)"

    return check


def served_model_check(server_url: str) -> Check:
    """The prediction server beside the listener has a model loaded: its ``/readyz`` is
    200 (it is 503, with the reason, while the champion loads or MLflow is down)."""
    url = server_url.rstrip("/") + "/readyz"

    def check() -> str:
        try:
            with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_S) as response:
                body = json.loads(response.read() or b"{}")
                return f"model version {body.get('version', '?')} loaded"
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}").get("detail", "")
            except ValueError:
                detail = ""
            raise ConnectionError(f"{url} {exc.code}: {detail or 'no model loaded'}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"{url}: {getattr(exc, 'reason', exc)}") from None

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
    session: list = []

    def check() -> str:
        if not uses_s3:
            return "not needed (local store)"
        if not session:
            import boto3

            session.append(boto3.Session())  # created once: the check runs every second
        credentials = session[0].get_credentials()
        if credentials is None:
            raise PermissionError(
                "no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return f"from {credentials.method}"

    return check
