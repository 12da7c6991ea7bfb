"""The LTE server's HTTP edge: bounded body reading and error bodies.

The hot routes (forecasts, probes) are answered by :class:`slocast.hot_routes.HotRoutes`,
shared with the latency server; the documented FastAPI routes of the same paths
call the same handlers and read their bodies with :func:`read_body`, under the
same limit and with the same 413 body.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from slocast.hot_routes import TooLargeBody
from slocast.serve.validation import InputError


def error_body(exc: InputError) -> tuple[int, bytes]:
    return exc.status, orjson.dumps({"detail": exc.message, "field": exc.field})


async def read_body(scope: dict, receive: Callable, limit: int) -> bytes | None:
    """The whole request body, at most ``limit`` bytes (413 beyond); None on disconnect."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise InputError(
                "body", f"{int(value)} bytes; at most {limit} bytes (SLOCAST_MAX_BODY_BYTES)", 413
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


def too_large_body(limit: int) -> TooLargeBody:
    """The 413 body :class:`slocast.hot_routes.HotRoutes` answers over ``limit``."""

    def body(declared: int | None) -> bytes:
        size = f"{declared} bytes; at most" if declared is not None else "more than"
        return error_body(
            InputError("body", f"{size} {limit} bytes (SLOCAST_MAX_BODY_BYTES)", 413)
        )[1]

    return body
