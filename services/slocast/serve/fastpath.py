"""Raw ASGI for the hot routes: forecasts and probes skip FastAPI's per-request machinery.

FastAPI builds a ``Request``, solves dependencies and wraps a ``Response`` for
every call: tens of microseconds that dwarf a compiled tree ensemble. The hot
routes are plain functions ``body bytes -> (status, JSON bytes)``; this middleware
calls them straight from the ASGI scope. The FastAPI routes of the same paths stay
registered with the same handlers: they carry the OpenAPI documentation and
answer identically if this middleware is not installed.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from slocast.serve.validation import InputError

# body -> (status, JSON body)
Handler = Callable[[bytes], tuple[int, bytes]]
_JSON_HEADER = (b"content-type", b"application/json")


def error_body(exc: InputError) -> tuple[int, bytes]:
    return exc.status, orjson.dumps({"detail": exc.message, "field": exc.field})


async def read_body(scope: dict, receive: Callable, limit: int) -> bytes | None:
    """The whole request body, at most ``limit`` bytes (413 beyond); None on disconnect."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise InputError(
                "body", f"{int(value)} bytes; at most {limit} (SLOCAST_MAX_BODY_BYTES)", 413
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # also bounds chunked bodies that declared no length
            raise InputError("body", f"more than {limit} bytes (SLOCAST_MAX_BODY_BYTES)", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FastPath:
    def __init__(
        self,
        app,
        *,
        post: dict[str, Handler],
        get: dict[str, Handler],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.routes = {("POST", path): h for path, h in post.items()}
        self.routes.update({("GET", path): h for path, h in get.items()})
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        handler = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            try:
                body = await read_body(scope, receive, self.max_body_bytes)
            except InputError as exc:
                status, payload = error_body(exc)
            else:
                if body is None:  # the client went away; nobody to answer
                    return
                status, payload = handler(body)
        else:
            status, payload = handler(b"")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADER, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
