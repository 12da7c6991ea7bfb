"""Prometheus metrics of the serving processes (HELP/TYPE via prometheus-client).

With several uvicorn workers, ``slocast serve`` points ``PROMETHEUS_MULTIPROC_DIR``
at a directory of its own before the workers start: every worker then keeps its
values in memory-mapped files there, and a scrape of ``/metrics``, whichever
worker answers, sums counters and histograms over all workers of the server and
lists each worker's gauges (``pid`` label). A single process keeps a plain
in-memory registry. Either way ``slocast_model_info`` has one series per worker
``pid``; after a reload the previous version's series stays at 0 in multiprocess
mode (values in the files cannot be deleted), so select ``== 1``.

Label children are cached in dicts so the request path pays one dict lookup and
one ``observe`` (a lock plus a bucket search), not prometheus-client's label
validation on every call.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Read by prometheus-client when it is imported: set before the workers start.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond buckets: the server-side p50 target is under 1 ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._multiprocess = multiprocess_dir() is not None
        # The multiprocess collector adds a pid label to per-worker gauges itself.
        gauge_mode = {"multiprocess_mode": "all"} if self._multiprocess else {}
        info_labels = ("task", "version", "family", "engine", "run_id")
        if not self._multiprocess:
            info_labels += ("pid",)
        self.requests = Counter(
            "slocast_http_requests",
            "HTTP requests answered, by route, method and status code.",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "slocast_http_request_duration_seconds",
            "Server-side time from request start to the last response byte handed to the server.",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handler_time = Histogram(
            "slocast_forecast_handler_seconds",
            "CPU-bound time of a forecast handler (parse, validate, predict, serialise), "
            "without waiting in the event loop or for the body: the service time.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "slocast_predictions",
            "Forecast windows computed, by the engine that computed them.",
            ("engine",),
            registry=r,
        )
        self.model_info = Gauge(
            "slocast_model_info",
            "The model this process serves (value 1).",
            info_labels,
            registry=r,
            **gauge_mode,
        )
        self.model_loaded_at = Gauge(
            "slocast_model_loaded_timestamp_seconds",
            "Unix time the served model was swapped in.",
            registry=r,
            **gauge_mode,
        )
        self.reloads = Counter(
            "slocast_model_reloads",
            "Reload checks, by outcome (swapped: a new version is served; unchanged).",
            ("outcome",),
            registry=r,
        )
        self.load_failures = Counter(
            "slocast_model_load_failures",
            "Failed attempts to fetch or load the champion (the old model keeps serving).",
            registry=r,
        )
        self.engine_fallbacks = Counter(
            "slocast_engine_fallbacks",
            "Models served with XGBoost inplace_predict because no compiled library loaded.",
            registry=r,
        )
        self.compiled_rejected = Counter(
            "slocast_compiled_libraries_rejected",
            "Compiled libraries shipped with a model (built at promotion) that failed "
            "verification (hash, index, booster) and were not used.",
            registry=r,
        )
        self.compiled_here = Counter(
            "slocast_compiled_libraries_built",
            "Boosters this process compiled itself because no verified library was "
            "shipped or cached (missing, rejected or built for another platform).",
            registry=r,
        )
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._prediction_children: dict[str, Counter] = {}
        self._info_labels: tuple[str, ...] | None = None

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def handler_timer(self, route: str) -> Histogram:
        return self.handler_time.labels(route)

    def count_predictions(self, engine: str, windows: int) -> None:
        child = self._prediction_children.get(engine)
        if child is None:
            child = self._prediction_children[engine] = self.predictions.labels(engine)
        child.inc(windows)

    def set_model(self, task: str, version: str, family: str, engine: str, run_id: str) -> None:
        labels = (task, version, family, engine, run_id)
        if not self._multiprocess:
            labels += (str(os.getpid()),)
        if self._info_labels is not None and self._info_labels != labels:
            # Zero first: a multiprocess value file keeps a removed series.
            self.model_info.labels(*self._info_labels).set(0)
            self.model_info.remove(*self._info_labels)
        self.model_info.labels(*labels).set(1)
        self._info_labels = labels

    def render(self) -> bytes:
        if not self._multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


def multiprocess_dir() -> str | None:
    """Where the workers of this server keep their metric values, if they share them."""
    return os.environ.get(MULTIPROCESS_ENV)
