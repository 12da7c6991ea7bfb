"""Small pieces both latency servers share at the HTTP edge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from slocast.latency.schema import ValidationFailure, decode_json


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
    )


def unprocessable(errors: list[dict[str, Any]]) -> Response:
    """FastAPI's own 422 shape, so clients see one error format everywhere."""
    return json_response({"detail": errors}, status_code=422)


async def read_json(request: Request, *, allow_empty: bool = False) -> Any:
    """Decode the body with orjson; malformed JSON is a 422 like FastAPI's."""
    return decode_json(await request.body(), allow_empty=allow_empty)


# body -> (status, JSON body)
Handler = Callable[[bytes], tuple[int, bytes]]
_JSON_HEADER = (b"content-type", b"application/json")


class FastRoutes:
    """Raw ASGI for the hot POST routes: FastAPI builds a ``Request``, resolves the
    route and wraps a ``Response`` per call (tens of microseconds, more than a
    single prediction); these handlers are plain ``body -> (status, bytes)``
    functions called straight from the ASGI scope. The FastAPI routes of the same
    paths call the same handlers: they document the API and answer identically
    without this middleware."""

    def __init__(self, app, *, post: dict[str, Handler]) -> None:
        self.app = app
        self.post = post

    async def __call__(self, scope, receive, send) -> None:
        handler = (
            self.post.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        status, payload = handler(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADER, (b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def install_validation_handler(app) -> None:
    async def handler(_: Request, exc: ValidationFailure) -> Response:
        return unprocessable(exc.errors)

    app.add_exception_handler(ValidationFailure, handler)
