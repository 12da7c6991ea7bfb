"""Small pieces both latency servers share at the HTTP edge: JSON responses, the
admin token check and the body-size limit (the raw-ASGI hot routes are
:mod:`slocast.hot_routes`, shared with the LTE server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from slocast.hot_routes import media_type_message, send_json
from slocast.http_auth import bearer_matches
from slocast.latency.schema import (
    SCHEMA_STRUCTS,
    ErrorBody,
    TooLargeBody,
    ValidationErrorBody,
    ValidationFailure,
    json_schema_components,
)


def _schema_ref(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{struct.__name__}"}}}


_ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    401: {"description": "Admin bearer token missing or wrong.", "content": _schema_ref(ErrorBody)},
    404: {
        "description": "Not found: an unknown name, or nothing trained or published yet.",
        "content": _schema_ref(ErrorBody),
    },
    413: {
        "description": "Body larger than the server's limit.",
        "content": _schema_ref(TooLargeBody),
    },
    415: {
        "description": "The body declares a media type other than JSON.",
        "content": _schema_ref(ErrorBody),
    },
    422: {
        "description": "Invalid body; `loc` names the field.",
        "content": _schema_ref(ValidationErrorBody),
    },
    503: {
        "description": "Not available right now (see `detail`).",
        "content": _schema_ref(ErrorBody),
    },
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an endpoint can answer."""
    return {status: _ERROR_RESPONSES[status] for status in statuses}


def document_bodies(app: FastAPI) -> None:
    """Put the Structs the handlers decode themselves (``schema.SCHEMA_STRUCTS``), and
    those they nest, into the OpenAPI components, where ``openapi_body`` and
    :func:`error_responses` point: FastAPI does not know these types."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            components = json_schema_components(SCHEMA_STRUCTS)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def _numpy(value: Any) -> Any:
    """NumPy scalars and arrays (metrics, evaluations) as JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_numpy)
encode_json = _encoder.encode


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(encode_json(content), status_code=status_code, media_type="application/json")


def unprocessable(errors: list[dict[str, Any]]) -> Response:
    """FastAPI's own 422 shape, so clients see one error format everywhere."""
    return json_response({"detail": errors}, status_code=422)


def admin_denied(request: Request, token: str | None) -> Response | None:
    """401 unless ``Authorization: Bearer <token>`` matches (None: no token set)."""
    if token is None:
        return None
    if bearer_matches(request.headers.get("authorization", ""), token):
        return None
    response = json_response({"detail": "a valid admin bearer token is required"}, 401)
    response.headers["www-authenticate"] = "Bearer"
    return response


MAX_BODY_SETTING = "SLOCAST_LATENCY_MAX_BODY_BYTES"


class BodyTooLarge(Exception):
    """The request body is larger than the server's limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def too_large_body(limit: int) -> bytes:
    return encode_json(
        TooLargeBody(f"request body larger than {limit} bytes ({MAX_BODY_SETTING})", limit)
    )


def unsupported_media_type(declared: bytes) -> bytes:
    """The 415 body of :class:`slocast.hot_routes.JsonBodies`."""
    return msgspec.json.encode({"detail": media_type_message(declared)})


def too_large(limit: int) -> Callable[[int | None], bytes]:
    """The 413 body for :class:`slocast.hot_routes.HotRoutes` (the same either way)."""
    payload = too_large_body(limit)
    return lambda _declared: payload


def declared_too_large(scope, limit: int) -> bool:
    """The request announces a ``Content-Length`` above ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.isdigit() and int(value) > limit
    return False


class BodyLimit:
    """Raw ASGI: bounds the body of every request that reaches the FastAPI app.

    A declared ``Content-Length`` above the limit is answered 413 without reading;
    otherwise ``receive`` counts the bytes and raises :class:`BodyTooLarge` once the
    limit is crossed (chunked bodies), which this layer turns into the same 413.
    The hot routes (:class:`slocast.hot_routes.HotRoutes`) read their bodies with the same limit
    and never pass through here."""

    def __init__(
        self, app, *, max_body_bytes: int, on_too_large: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.on_too_large = on_too_large

    async def _refuse(self, scope, send) -> None:
        if self.on_too_large is not None:
            self.on_too_large(scope["path"])
        await send_json(send, 413, too_large_body(self.limit))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if declared_too_large(scope, limit):
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, send)


def install_validation_handler(app) -> None:
    async def handler(_: Request, exc: ValidationFailure) -> Response:
        return unprocessable(exc.errors)

    app.add_exception_handler(ValidationFailure, handler)
