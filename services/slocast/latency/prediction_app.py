"""The latency prediction server (default port 8001).

Request path: body bytes -> columns (the native kernel's strict JSON parser, or orjson
+ column-wise NumPy validation when the kernel is absent or unsure) -> one feature
matrix -> branchless trees (or compiled trees) -> conformal bound -> the response
bytes spliced from orjson-formatted columns. No pydantic, pandas, FastAPI request
objects or per-row Python on the way: the hot POST routes are plain
``body -> (status, bytes)`` handlers behind a raw ASGI middleware.
Each uvicorn worker runs this app with its own :class:`ModelHolder` and watcher.
"""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from slocast.latency.http_common import (
    FastRoutes,
    install_validation_handler,
    json_response,
)
from slocast.latency.schema import (
    MAX_ITEMS,
    BulkPredictionRequest,
    PredictionRequest,
    ValidationFailure,
    decode_json,
    feature_columns,
    item_list,
    openapi_body,
    parse_features,
)
from slocast.latency.serving import ModelHolder, PointerWatcher, ServedModel, request_reload
from slocast.latency.settings import PredictionSettings

NO_MODEL = {"detail": "no model loaded yet; post training data to the training server"}
_NO_MODEL = orjson.dumps(NO_MODEL)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _common(model: ServedModel) -> dict:
    return {
        "predicted_at": datetime.now(UTC).isoformat(),
        "model_type": model.model_type,
        "objective_type": model.objective_type,
        "quantile": model.quantile,
        "last_model_load": model.loaded_at,
    }


def _rows(model: ServedModel, bounds: dict[str, np.ndarray]) -> list[dict]:
    """Prediction objects in the upstream shape (P-quantile bounds in ms)."""
    common = _common(model)
    return [
        {"ttft_ms": ttft, "tpot_ms": tpot, **common}
        for ttft, tpot in zip(bounds["ttft"].tolist(), bounds["tpot"].tolist(), strict=True)
    ]


def _rows_json(model: ServedModel, bounds: dict[str, np.ndarray]) -> bytes:
    """The same objects as :func:`_rows`, rendered as a JSON array without a dict per
    row: orjson formats the numbers (one call), the kernel splices them between the
    keys and the common fields with ``memcpy`` (Python fallback: split and join).
    Equality with ``orjson.dumps(_rows(...))`` is tested."""
    tail = b"," + orjson.dumps(_common(model))[1:]
    ttft, tpot = bounds["ttft"], bounds["tpot"]
    if model.kernel is not None:
        pairs = orjson.dumps(np.column_stack((ttft, tpot)), option=_NUMPY)
        out = model.kernel.pairs_json(pairs, ttft.shape[0], b'{"ttft_ms":', b',"tpot_ms":', tail)
        if out is not None:
            return out
    a = orjson.dumps(ttft, option=_NUMPY)[1:-1].split(b",")
    b = orjson.dumps(tpot, option=_NUMPY)[1:-1].split(b",")
    between = tail + b',{"ttft_ms":'
    return (
        b'[{"ttft_ms":'
        + between.join(map(b',"tpot_ms":'.join, zip(a, b, strict=True)))
        + tail
        + b"]"
    )


def create_prediction_app(settings: PredictionSettings | None = None) -> FastAPI:
    """App factory (``uvicorn --factory``): settings come from the environment."""
    settings = settings or PredictionSettings.from_env()
    holder = ModelHolder(settings.model_dir, settings.compile_cache)
    watcher = PointerWatcher(holder, settings.watch_interval_s)
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

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        holder.refresh()
        watcher.start()
        yield
        watcher.stop()

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
                status, payload, rows = 422, orjson.dumps({"detail": exc.errors}), 0
            count(endpoint, status, rows)
            return status, payload

        return guarded

    def predict_one(body: bytes) -> tuple[int, bytes, int]:
        model = holder.current
        cols = feature_columns(body, None, model.parser if model is not None else None)
        if model is None:
            return 503, _NO_MODEL, 0
        bounds = model.predict(cols)
        return 200, _rows_json(model, bounds)[1:-1], 1

    def predict_bulk_strict(body: bytes) -> tuple[int, bytes, int]:
        started = time.perf_counter()
        model = holder.current
        cols = feature_columns(body, "requests", model.parser if model is not None else None)
        if model is None:
            return 503, _NO_MODEL, 0
        rows = int(cols["kv_cache_percentage"].shape[0])
        predictions = _rows_json(model, model.predict(cols))
        elapsed_ms = 1000 * (time.perf_counter() - started)
        return (
            200,
            b'{"predictions":'
            + predictions
            + b',"total_requests":%d,"successful_predictions":%d,"failed_predictions":0,'
            b'"processing_time_ms":%.3f}' % (rows, rows, elapsed_ms),
            rows,
        )

    def predict_bulk(body: bytes) -> tuple[int, bytes, int]:
        started = time.perf_counter()
        model = holder.current
        cols = None
        if model is not None and model.parser is not None:
            cols = model.parser.parse(body, "requests", MAX_ITEMS)
        if cols is not None:  # every item valid
            valid, errors = list(range(int(cols["kv_cache_percentage"].shape[0]))), []
            total = len(valid)
        else:
            items = item_list(decode_json(body), "requests")
            total = len(items)
            if model is None:
                return 503, _NO_MODEL, 0
            try:
                valid, errors = list(range(len(items))), []
                cols = parse_features(items, ("requests",))
            except ValidationFailure:
                # Slow path only when something is wrong: find every bad item.
                valid, errors = [], []
                for index, item in enumerate(items):
                    try:
                        parse_features([item])
                        valid.append(index)
                    except ValidationFailure as exc:
                        detail = exc.errors[0]
                        field = ".".join(str(p) for p in detail["loc"][2:]) or "item"
                        errors.append({"index": index, "error": f"{field}: {detail['msg']}"})
                cols = parse_features([items[i] for i in valid]) if valid else None
        predictions: list[dict | None] = [None] * total
        if cols is not None:
            for index, row in zip(valid, _rows(model, model.predict(cols)), strict=True):
                predictions[index] = row
        body = {
            "predictions": predictions,
            "errors": errors,
            "total_requests": total,
            "successful_predictions": len(valid),
            "failed_predictions": len(errors),
            "processing_time_ms": 1000 * (time.perf_counter() - started),
        }
        return 200, orjson.dumps(body), len(valid)

    handlers = {
        "/predict": answer("predict", predict_one),
        "/predict/bulk/strict": answer("bulk_strict", predict_bulk_strict),
        "/predict/bulk": answer("bulk", predict_bulk),
    }
    app.add_middleware(FastRoutes, post=handlers)

    # The routes below document the API (OpenAPI); FastRoutes answers these paths
    # first with the very same handlers.
    async def respond(path: str, request: Request) -> Response:
        status, payload = handlers[path](await request.body())
        return Response(payload, status_code=status, media_type="application/json")

    @app.post("/predict", openapi_extra=openapi_body(PredictionRequest))
    async def predict(request: Request) -> Response:
        return await respond("/predict", request)

    @app.post("/predict/bulk/strict", openapi_extra=openapi_body(BulkPredictionRequest))
    async def predict_bulk_strict_route(request: Request) -> Response:
        return await respond("/predict/bulk/strict", request)

    @app.post("/predict/bulk", openapi_extra=openapi_body(BulkPredictionRequest))
    async def predict_bulk_route(request: Request) -> Response:
        return await respond("/predict/bulk", request)

    def status_body() -> dict:
        model = holder.current
        if model is None:
            return {
                "is_ready": False,
                "model_type": None,
                "objective_type": None,
                "quantile": None,
                "last_model_load": None,
                "model_version": None,
            }
        return {
            "is_ready": True,
            "model_type": model.model_type,
            "objective_type": model.objective_type,
            "quantile": model.quantile,
            "last_model_load": model.loaded_at,
            "model_version": model.version,
            "engines": model.engines,
            "worker_pid": os.getpid(),
        }

    @app.get("/status")
    async def status() -> Response:
        return json_response(status_body())

    @app.post("/reload")
    async def reload() -> Response:
        request_reload(settings.model_dir)  # every worker's watcher follows this
        holder.refresh(force=True)
        return json_response(status_body())

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if holder.current is None:
            return json_response({"status": "not ready", "reason": "no model loaded"}, 503)
        return json_response({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        model = holder.current
        model_info.clear()
        if model is not None:
            engines = model.engines
            loaded = datetime.fromisoformat(model.loaded_at).timestamp()
            model_info.labels(pid, model.version, engines["ttft"], engines["tpot"]).set(loaded)
        load_errors.labels(pid).set(holder.load_errors)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
