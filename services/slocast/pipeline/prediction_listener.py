"""The model-selected listener of a prediction pod: turns promotions into reloads in < 2 s.

It consumes model-selected in a consumer group of its own (``<ns>.predict-<instance>``,
so every pod sees every event) and calls the prediction server's hook
:func:`slocast.serve.reloading.request_reload`, which bumps a generation file that
every uvicorn worker of the pod watches. The workers then re-read the ``champion``
alias, so a duplicate or stale event costs one registry lookup and nothing else;
the workers' own periodic alias check (``SLOCAST_REGISTRY_POLL_SECONDS``) is the
safety net if an event is ever missed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable

from confluent_kafka import Message

from slocast.pipeline.events import EventError, ModelSelected, parse_event
from slocast.pipeline.health import served_model_check
from slocast.pipeline.kafka.runner import ServiceContext, configure_logging
from slocast.pipeline.kafka.transport import PermanentError
from slocast.settings import ListenerSettings

log = logging.getLogger(__name__)
SERVICE = "predict"


class ModelSelectedListener:
    def __init__(self, task: str, reload: Callable[[], int]) -> None:
        self.task = task
        self.reload = reload

    def __call__(self, msg: Message) -> None:
        try:
            event = parse_event(msg.value(), ModelSelected)
        except EventError as exc:
            raise PermanentError(str(exc)) from exc
        if event.task != self.task:
            log.info(
                "model-selected %s v%s not served here: this server serves task %s (SLOCAST_TASK)",
                event.task,
                event.model_version,
                self.task,
            )
            return
        generation = self.reload()
        log.info(
            "model-selected %s v%s -> reload generation %d",
            event.task,
            event.model_version,
            generation,
        )


def serve_reload_hook() -> tuple[str, Callable[[], int]]:
    """(task served, reload hook) from the prediction server's own settings."""
    from slocast.serve.reloading import request_reload
    from slocast.settings import ServeSettings

    serve_settings = ServeSettings.from_env()
    return serve_settings.task, lambda: request_reload(serve_settings)


def listener_context(settings: ListenerSettings, server_url: str | None = None) -> ServiceContext:
    """The listener's checks; with ``server_url`` its ``/readyz`` also requires the
    prediction server to have a model loaded. That check is report-only: the listener
    keeps consuming (and requesting reloads) while the server has no model yet."""
    report_only = {"model": served_model_check(server_url)} if server_url else None
    return ServiceContext(
        SERVICE, settings.common, needs_mlflow=False, needs_store=False, report_only=report_only
    )


def server_url_for(host: str, port: int) -> str:
    """Where the listener reaches the server it started (a wildcard bind is local)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def run_listener(settings: ListenerSettings, server_url: str | None = None) -> int:
    common = settings.common
    configure_logging(SERVICE, common.log_level)
    task, hook = serve_reload_hook()
    ctx = listener_context(settings, server_url).start()
    ctx.consume(
        f"{SERVICE}-{settings.instance_id}",
        [common.topics.model_selected],
        ModelSelectedListener(task, hook),
    )
    return 0


def run(settings: ListenerSettings, host: str, port: int, workers: int) -> int:
    """``slocast service predict``: the prediction server as a child process plus the
    listener, whose ``/readyz`` includes the server's (a model is loaded)."""
    serve_args = ["--host", host, "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen([sys.executable, "-m", "slocast.cli", "serve", *serve_args])
    try:
        return run_listener(settings, server_url_for(host, port))
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
