"""The latency prediction server (default port 8001).

Request path: body bytes -> typed Structs (msgspec, in C; :mod:`slocast.latency.schema`)
-> NumPy columns -> one feature matrix (:mod:`slocast.latency.features`) -> the tree
engine (the native forest kernel, or XGBoost; :mod:`slocast.latency.native`) ->
conformal bound -> response Structs encoded by msgspec. No pydantic, FastAPI request
objects or per-row Python validation on the way: the hot POST routes are plain
``body -> (status, bytes)`` handlers behind a raw ASGI middleware.
Each uvicorn worker runs this app with its own :class:`ModelHolder` and watcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from itertools import repeat

import msgspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from slocast.hot_routes import HotRoutes, JsonBodies
from slocast.latency.bundle import PUBLIC_OBJECTIVE, BundleError, read_pointer
from slocast.latency.http_common import (
    METRICS_RESPONSES,
    BodyLimit,
    admin_denied,
    document_bodies,
    encode_json,
    error_responses,
    install_validation_handler,
    json_response,
    too_large,
    unsupported_media_type,
)
from slocast.latency.model_sync import BundleSync, SyncError, published_version
from slocast.latency.schema import (
    BulkPredictionRequest,
    PredictionRequest,
    ValidationFailure,
    decode_bulk,
    decode_request,
    openapi_body,
)
from slocast.latency.serving import (
    ModelHolder,
    PointerWatcher,
    ServedModel,
    forget_serving,
    prior_model,
    record_serving,
    request_reload,
    serves_at_least,
    workers_serving,
)
from slocast.settings import LatencyPredictionSettings

log = logging.getLogger(__name__)
NO_MODEL = {"detail": "no model loaded yet; post training data to the training server"}
_NO_MODEL = encode_json(NO_MODEL)
# How long `/reload` waits for every worker to serve the newest model (below the
# upstream client's 20 s request timeout), and how often it looks.
RELOAD_WAIT_S = 10.0
RELOAD_POLL_S = 0.02


class Prediction(msgspec.Struct, gc=False):
    """One prediction in the upstream shape (P-quantile bounds in ms)."""

    ttft_ms: float
    tpot_ms: float
    predicted_at: str
    model_type: str
    objective_type: str
    quantile: float
    last_model_load: str
    cold: bool


class BulkStrictResponse(msgspec.Struct, gc=False):
    predictions: list[Prediction]
    total_requests: int
    successful_predictions: int
    failed_predictions: int
    processing_time_ms: float


class PredictionError(msgspec.Struct, gc=False):
    index: int
    error: str


class BulkResponse(msgspec.Struct, gc=False):
    predictions: list[Prediction | None]
    errors: list[PredictionError]
    total_requests: int
    successful_predictions: int
    failed_predictions: int
    processing_time_ms: float


def predictions(model: ServedModel, bounds: dict[str, np.ndarray]) -> list[Prediction]:
    """One :class:`Prediction` per row, built in C (``map`` over the two columns)."""
    common = (
        datetime.now(UTC).isoformat(),
        model.model_type,
        model.objective_type,
        model.quantile,
        model.loaded_at,
        model.cold,
    )
    return list(
        map(
            Prediction,
            bounds["ttft"].tolist(),
            bounds["tpot"].tolist(),
            *(repeat(value) for value in common),
        )
    )


def create_prediction_app(settings: LatencyPredictionSettings | None = None) -> FastAPI:
    """App factory (``uvicorn --factory``): settings come from the environment."""
    settings = settings or LatencyPredictionSettings.from_env()
    holder = ModelHolder(
        settings.model_dir,
        settings.engine,
        prior_model(settings.quantile) if settings.cold_prior else None,
    )
    watcher = PointerWatcher(holder, settings.watch_interval_s)
    sync = (
        BundleSync(settings.sync_url, settings.model_dir, settings.sync_interval_s)
        if settings.sync_url
        else None
    )
    registry = CollectorRegistry()
    pid = str(os.getpid())
    requests_total = Counter(
        "slocast_latency_prediction_requests",
        "Prediction requests by endpoint and status.",
        ["endpoint", "status", "worker"],
        registry=registry,
    )
    rows_total = Counter(
        "slocast_latency_predicted_rows", "Candidate rows predicted.", ["worker"], registry=registry
    )
    model_info = Gauge(
        "slocast_latency_model_loaded_timestamp",
        "Unix time the served model was loaded.",
        ["worker", "version", "ttft_engine", "tpot_engine"],
        registry=registry,
    )
    load_errors = Gauge(
        "slocast_latency_model_load_errors",
        "Failed model loads in this worker.",
        ["worker"],
        registry=registry,
    )
    loads_gauge = Gauge(
        "slocast_latency_model_loads",
        "Models this worker loaded (start, promotions, reloads).",
        ["worker"],
        registry=registry,
    )
    fallbacks_gauge = Gauge(
        "slocast_latency_engine_fallbacks",
        "Targets of the served model on XGBoost although SLOCAST_LATENCY_ENGINE=native "
        "(the native forest could not represent or reproduce their trees).",
        ["worker"],
        registry=registry,
    )
    cold_gauge = Gauge(
        "slocast_latency_model_cold",
        "1 while this worker serves the cold-start prior (no trained model yet).",
        ["worker"],
        registry=registry,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if not holder.refresh() and holder.current is not None:
            record_serving(holder.registry, holder.current.version)  # the prior
        watcher.start()
        if sync is not None:
            sync.start()
        yield
        watcher.stop()
        if sync is not None:
            sync.stop()
        forget_serving(holder.registry)

    app = FastAPI(title="slocast latency prediction server", lifespan=lifespan)
    install_validation_handler(app)

    counters: dict[tuple[str, int], Counter] = {}  # labelled children, looked up once
    rows_counter = rows_total.labels(pid)

    def count(endpoint: str, status: int, rows: int = 0) -> None:
        child = counters.get((endpoint, status))
        if child is None:
            child = counters[endpoint, status] = requests_total.labels(endpoint, str(status), pid)
        child.inc()
        if rows:
            rows_counter.inc(rows)

    def answer(endpoint: str, handler):
        """A handler with 422s rendered in FastAPI's format and every status counted."""

        def guarded(body: bytes) -> tuple[int, bytes]:
            try:
                status, payload, rows = handler(body)
            except ValidationFailure as exc:
                status, payload, rows = 422, encode_json({"detail": exc.errors}), 0
            count(endpoint, status, rows)
            return status, payload

        return guarded

    def predict_one(body: bytes) -> tuple[int, bytes, int]:
        cols = decode_request(body)
        model = holder.current
        if model is None:
            return 503, _NO_MODEL, 0
        return 200, encode_json(predictions(model, model.predict(cols))[0]), 1

    def predict_bulk_strict(body: bytes) -> tuple[int, bytes, int]:
        started = time.perf_counter()
        cols = decode_bulk(body)
        model = holder.current
        if model is None:
            return 503, _NO_MODEL, 0
        rows = predictions(model, model.predict(cols))
        response = BulkStrictResponse(
            rows, len(rows), len(rows), 0, 1000 * (time.perf_counter() - started)
        )
        return 200, encode_json(response), len(rows)

    def predict_bulk(body: bytes) -> tuple[int, bytes, int]:
        started = time.perf_counter()
        cols = decode_bulk(body)
        model = holder.current
        if model is None:
            return 503, _NO_MODEL, 0
        bounds = model.predict(cols)
        # A schema error in any item is a 422 for the whole body (as upstream); what
        # is left per item is a failure at prediction time: a bound that is not a
        # finite number is reported, not served.
        finite = np.isfinite(bounds["ttft"]) & np.isfinite(bounds["tpot"])
        rows: list[Prediction | None] = predictions(model, bounds)
        errors = [
            PredictionError(int(i), "prediction is not a finite number")
            for i in np.flatnonzero(~finite)
        ]
        for error in errors:
            rows[error.index] = None
        served = len(rows) - len(errors)
        response = BulkResponse(
            rows, errors, len(rows), served, len(errors), 1000 * (time.perf_counter() - started)
        )
        return 200, encode_json(response), served

    endpoints = {
        "/predict": "predict",
        "/predict/bulk/strict": "bulk_strict",
        "/predict/bulk": "bulk",
    }
    handlers = {
        "/predict": answer("predict", predict_one),
        "/predict/bulk/strict": answer("bulk_strict", predict_bulk_strict),
        "/predict/bulk": answer("bulk", predict_bulk),
    }
    # Outermost: JSON bodies only (415); then the hot routes (body bounded there);
    # every other request passes BodyLimit on its way to FastAPI.
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        HotRoutes,
        post=handlers,
        max_body_bytes=settings.max_body_bytes,
        too_large=too_large(settings.max_body_bytes),
        on_too_large=lambda path: count(endpoints[path], 413),
    )
    app.add_middleware(JsonBodies, unsupported=unsupported_media_type)
    document_bodies(app)
    hot_errors = error_responses(413, 415, 422, 503)

    # The routes below document the API (OpenAPI); HotRoutes answers these paths
    # first with the very same handlers.
    async def respond(path: str, request: Request) -> Response:
        status, payload = handlers[path](await request.body())
        return Response(payload, status_code=status, media_type="application/json")

    @app.post("/predict", openapi_extra=openapi_body(PredictionRequest), responses=hot_errors)
    async def predict(request: Request) -> Response:
        return await respond("/predict", request)

    @app.post(
        "/predict/bulk/strict",
        openapi_extra=openapi_body(BulkPredictionRequest),
        responses=hot_errors,
    )
    async def predict_bulk_strict_route(request: Request) -> Response:
        return await respond("/predict/bulk/strict", request)

    @app.post(
        "/predict/bulk", openapi_extra=openapi_body(BulkPredictionRequest), responses=hot_errors
    )
    async def predict_bulk_route(request: Request) -> Response:
        return await respond("/predict/bulk", request)

    def status_body() -> dict:
        model = holder.current
        if model is None:
            return {
                "is_ready": False,
                "cold": True,
                "model_type": None,
                # What this server predicts once a model serves: clients branch on it.
                "objective_type": PUBLIC_OBJECTIVE,
                "quantile": settings.quantile,
                "last_model_load": None,
                "model_version": None,
                "models_exist": {"ttft": False, "tpot": False},
                "ensemble_active": False,
            }
        trained = not model.cold
        return {
            "is_ready": True,
            # True while the cold-start prior answers (docs/latency.md).
            "cold": model.cold,
            "model_type": model.model_type,
            "objective_type": model.objective_type,
            "objectives": model.objectives,
            "quantile": model.quantile,
            "last_model_load": model.loaded_at,
            "model_version": model.version,
            "models_exist": {"ttft": trained, "tpot": trained},
            # No gated/ensemble models: one calibrated model per target.
            "ensemble_active": False,
            # configured engine, the engine serving each target, and how many of
            # them fell back to XGBoost (docs/latency.md, "Request path and engines")
            "engine": settings.engine,
            "engines": model.engines,
            "engine_fallbacks": holder.engine_fallbacks,
            "worker_pid": os.getpid(),
            # Where models come from: the shared directory only, or also downloads
            # from a training server (syncs and errors of this worker).
            "model_sync": None if sync is None else asdict(sync.stats),
        }

    @app.get("/")
    async def root() -> Response:
        model = holder.current
        return json_response(
            {
                "message": "slocast latency prediction server",
                "model_type": None if model is None else model.model_type,
                "objective_type": PUBLIC_OBJECTIVE if model is None else model.objective_type,
                "quantile": settings.quantile if model is None else model.quantile,
                "is_ready": model is not None,
                "cold": model is None or model.cold,
                "model_version": None if model is None else model.version,
                "description": "P-quantile TTFT/TPOT bounds (ms) from conformal-calibrated "
                "XGBoost models; docs/latency.md",
            }
        )

    @app.get("/status")
    async def status() -> Response:
        return json_response(status_body())

    def newest_version() -> str | None:
        """What a reload should bring: the trainer's published version when models
        are downloaded from it, else the pointer of the model directory."""
        if settings.sync_url:
            try:
                return published_version(settings.sync_url)
            except SyncError as exc:
                log.warning("reload: cannot ask the training server (%s)", exc)
        try:
            pointer = read_pointer(settings.model_dir)
        except BundleError:
            return None
        return None if pointer is None else pointer.version

    async def every_worker_serves(target: str) -> bool:
        """Wait (never blocking the event loop) until this worker and every other
        live worker of this server serve ``target`` or newer; False at the deadline."""
        deadline = time.monotonic() + RELOAD_WAIT_S
        while True:
            mine = holder.current
            if serves_at_least(None if mine is None else mine.version, target) and all(
                serves_at_least(v, target) for v in workers_serving(holder.registry).values()
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(RELOAD_POLL_S)

    @app.post("/reload", responses=error_responses(401, 413, 415))
    async def reload(request: Request) -> Response:
        """Reload the published model in every worker, off the request path.

        The loads run on each worker's watcher thread, never in a request; requests
        coalesce into at most two reloads per worker (``reload``: ``scheduled``, or
        ``pending`` when a reload this worker has not started yet was already
        requested). The answer waits, up to ``RELOAD_WAIT_S``, until every worker of
        this server serves the newest published model (with ``TRAINING_SERVER_URL``,
        the trainer's: downloaded first), as upstream's synchronous reload does, so a
        client predicting right after it gets that model; ``every_worker_serves``
        says whether it did in time."""
        denied = admin_denied(request, settings.admin_token)
        if denied is not None:
            return denied
        await request.body()  # unused, but bounded like every body (413 above the limit)
        pending = watcher.reload_pending()
        if not pending:
            try:
                request_reload(settings.model_dir)  # every worker's watcher follows this
            except OSError as exc:  # e.g. a read-only model volume: this worker only
                log.warning("cannot write the reload file (%s): reloading this worker", exc)
                watcher.request_local()
        target = await asyncio.to_thread(newest_version)
        served = target is None or await every_worker_serves(target)
        return json_response(
            {
                **status_body(),
                "reload": "pending" if pending else "scheduled",
                "newest_version": target,
                "every_worker_serves": served,
            }
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", responses=error_responses(503))
    async def readyz() -> Response:
        if holder.current is None:
            return json_response(
                {
                    "status": "not ready",
                    "reason": "no model trained yet and the cold-start prior is off "
                    "(SLOCAST_LATENCY_COLD_PRIOR=false)",
                },
                503,
            )
        return json_response({"status": "ready"})

    @app.get("/metrics", response_class=PlainTextResponse, responses=METRICS_RESPONSES)
    async def prometheus() -> Response:
        model = holder.current
        model_info.clear()
        if model is not None:
            engines = model.engines
            loaded = datetime.fromisoformat(model.loaded_at).timestamp()
            model_info.labels(pid, model.version, engines["ttft"], engines["tpot"]).set(loaded)
        load_errors.labels(pid).set(holder.load_errors)
        loads_gauge.labels(pid).set(holder.loads)
        fallbacks_gauge.labels(pid).set(holder.engine_fallbacks)
        cold_gauge.labels(pid).set(1 if model is None or model.cold else 0)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
