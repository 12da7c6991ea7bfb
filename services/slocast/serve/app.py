"""The FastAPI application of the prediction server.

Handlers are thin: read the body (bounded), validate into arrays
(:mod:`.validation`), compute (:mod:`.forecasting`), return pre-serialised orjson
bytes. Nothing heavy happens per request; model loading, compiling and the
engine choice happen in the reload thread (:mod:`.reloading`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from slocast import __version__
from slocast.core.openapi import add_body_schemas
from slocast.hot_routes import Handler, HotRoutes, JsonBodies, media_type_message
from slocast.http_auth import bearer_matches
from slocast.serve import schemas
from slocast.serve.fastpath import error_body, read_body, too_large_body
from slocast.serve.forecasting import batch_body, forecast_body
from slocast.serve.metrics import ServeMetrics
from slocast.serve.reloading import ModelHolder, ReloadOutcome, ReloadWatcher, request_reload
from slocast.serve.validation import InputError, parse_batch, parse_forecast
from slocast.settings import ServeSettings

log = logging.getLogger(__name__)
JSON = "application/json"
ROUTES = frozenset(
    (
        "/v1/forecast",
        "/v1/forecast/batch",
        "/v1/model",
        "/v1/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    )
)
_HEALTHY = orjson.dumps({"status": "ok"})
_ERRORS = {
    400: {"model": schemas.ErrorResponse, "description": "Body is not valid JSON."},
    413: {"model": schemas.ErrorResponse, "description": "Body, history or batch too large."},
    415: {
        "model": schemas.ErrorResponse,
        "description": "Body declared as another type than JSON.",
    },
    422: {"model": schemas.ErrorResponse, "description": "Invalid input; `field` names it."},
    503: {"model": schemas.ErrorResponse, "description": "No model loaded yet."},
}


def _body_doc(model: type) -> dict:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": ref}}}}


def _error(status: int, detail: str, field: str | None = None) -> Response:
    return Response(orjson.dumps({"detail": detail, "field": field}), status, media_type=JSON)


class MetricsMiddleware:
    """Pure ASGI timing of every HTTP request (Starlette's BaseHTTPMiddleware costs ~50 us)."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            self.metrics.observe_request(
                path if path in ROUTES else "unmatched",
                scope["method"],
                status,
                time.perf_counter() - started,
            )


async def _body(request: Request, limit: int) -> bytes:
    body = await read_body(request.scope, request.receive, limit)
    return b"" if body is None else body


def create_app(settings: ServeSettings | None = None) -> ASGIApp:
    """The app factory ``uvicorn`` calls in every worker process: the FastAPI app
    (documented routes) behind the metrics and hot-route layers."""
    settings = settings or ServeSettings.from_env()
    if not logging.getLogger().handlers:  # uvicorn workers are fresh processes
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # numpy warns (once per call site) that it converts "Z"/offsets to UTC: intended.
    warnings.filterwarnings("ignore", message="no explicit representation of timezones")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
    metrics = ServeMetrics()
    holder = ModelHolder(settings, metrics)
    watcher = ReloadWatcher(holder)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher.start()
        yield
        watcher.stop()

    app = FastAPI(
        title="slocast prediction server",
        version=__version__,
        description="Forecasts of LTE cell load with calibrated upper bounds, served from the "
        "registry's champion model.",
        lifespan=lifespan,
    )

    def _forecast_handler(route: str, parse, render, batch: bool) -> Handler:
        service_time = metrics.handler_timer(route)

        def handle(body: bytes) -> tuple[int, bytes]:
            started = time.perf_counter()
            model = holder.current  # read once: a concurrent swap cannot change it under us
            if model is None:
                return error_body(
                    InputError("model", "no model loaded yet; retry when /readyz is 200", 503)
                )
            try:
                payload, windows = render(model, parse(body, model.rules))
            except InputError as exc:
                return error_body(exc)
            engine = model.predictor.engine
            metrics.count_predictions(engine, windows)
            service_time.observe(time.perf_counter() - started)
            return 200, payload

        return handle

    def _healthz(_: bytes) -> tuple[int, bytes]:
        return 200, _HEALTHY

    def _readyz(_: bytes) -> tuple[int, bytes]:
        model = holder.current
        if model is None:
            return 503, orjson.dumps(
                {"detail": holder.last_error or "loading the champion", "field": "model"}
            )
        return 200, orjson.dumps({"status": "ready", "version": model.version})

    def _model_info(_: bytes) -> tuple[int, bytes]:
        model = holder.current
        if model is None:
            return 503, orjson.dumps(
                {"detail": holder.last_error or "no model loaded yet", "field": "model"}
            )
        return 200, orjson.dumps(model.info)

    forecast_one = _forecast_handler("/v1/forecast", parse_forecast, forecast_body, False)
    forecast_many = _forecast_handler("/v1/forecast/batch", parse_batch, batch_body, True)
    # Outside FastAPI, not inside its middleware stack: a hot request then skips
    # FastAPI's per-call OpenTelemetry check and Starlette's error middleware too
    # (an unexpected exception still becomes uvicorn's 500, counted as such here).
    served = MetricsMiddleware(
        JsonBodies(
            HotRoutes(
                app,
                post={"/v1/forecast": forecast_one, "/v1/forecast/batch": forecast_many},
                get={"/healthz": _healthz, "/readyz": _readyz, "/v1/model": _model_info},
                max_body_bytes=settings.max_body_bytes,
                too_large=too_large_body(settings.max_body_bytes),
            ),
            unsupported=lambda declared: error_body(
                InputError("content-type", media_type_message(declared), 415)
            )[1],
        ),
        metrics,
    )

    def _respond(result: tuple[int, bytes]) -> Response:
        return Response(result[1], result[0], media_type=JSON)

    # The routes below document the API; HotRoutes answers the hot ones first with
    # the very same handlers.
    def _documented_forecast(
        name: str, path: str, handler: Handler, summary: str, body, answer
    ) -> None:
        async def route(request: Request) -> Response:
            try:
                return _respond(handler(await _body(request, settings.max_body_bytes)))
            except InputError as exc:
                return _respond(error_body(exc))

        app.post(
            path,
            name=name,  # the operationId's stem
            summary=summary,
            response_model=answer,
            responses=_ERRORS,
            openapi_extra=_body_doc(body),
        )(route)

    _documented_forecast(
        "forecast",
        "/v1/forecast",
        forecast_one,
        "Forecast one series",
        schemas.ForecastRequest,
        schemas.ForecastResponse,
    )
    _documented_forecast(
        "forecast_batch",
        "/v1/forecast/batch",
        forecast_many,
        "Forecast many series in one vectorised call",
        schemas.BatchForecastRequest,
        schemas.BatchForecastResponse,
    )

    @app.get(
        "/v1/model",
        summary="The served model",
        response_model=schemas.ModelInfo,
        responses={503: _ERRORS[503]},
    )
    async def model_info() -> Response:
        return _respond(_model_info(b""))

    @app.post(
        "/v1/reload",
        summary="Re-check the champion alias in every worker",
        response_model=schemas.ReloadResponse,
        responses={
            401: {"model": schemas.ErrorResponse, "description": "Bearer token required."},
            415: _ERRORS[415],
        },
    )
    async def reload(request: Request) -> Response:
        if settings.admin_token is not None:
            given = request.headers.get("authorization", "")
            if not bearer_matches(given, settings.admin_token):
                response = _error(401, "missing or wrong bearer token", "authorization")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        served = holder.current
        before = served.version if served else None
        generation = request_reload(settings)
        watcher.seen_generation = generation  # this worker reloads right here
        outcome = await run_in_threadpool(holder.refresh)
        if outcome.outcome == "unchanged" and outcome.version != before:
            # This worker's watcher saw the new generation first and swapped already.
            outcome = ReloadOutcome("swapped", outcome.version, before)
        return Response(
            orjson.dumps({**outcome.to_dict(), "generation": generation}), media_type=JSON
        )

    @app.get("/healthz", summary="Liveness", response_model=schemas.Status)
    async def healthz() -> Response:
        return _respond(_healthz(b""))

    @app.get(
        "/readyz",
        summary="Readiness: 200 once a model is loaded",
        response_model=schemas.Status,
        responses={503: _ERRORS[503]},
    )
    async def readyz() -> Response:
        return _respond(_readyz(b""))

    @app.get("/metrics", summary="Prometheus metrics of this worker", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            add_body_schemas(doc, (schemas.ForecastRequest, schemas.BatchForecastRequest))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
    return served
