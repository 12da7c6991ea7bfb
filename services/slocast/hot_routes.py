"""Raw ASGI for the hot routes of both prediction servers (LTE and LLM latency).

FastAPI builds a ``Request``, resolves the route, solves dependencies and wraps a
``Response`` for every call: tens of microseconds, more than one prediction. The
hot routes are plain functions ``body bytes -> (status, JSON bytes)`` called
straight from the ASGI scope. The FastAPI routes of the same paths call the same
handlers: they carry the OpenAPI documentation and answer identically without this
layer. Every body is bounded here: a declared ``Content-Length`` above the limit is
refused before reading, a chunked body as soon as it crosses it (413). A body that
declares a media type other than JSON is refused by :class:`JsonBodies` (415).
"""

from __future__ import annotations

from collections.abc import Callable

# body -> (status, JSON body)
Handler = Callable[[bytes], tuple[int, bytes]]
# declared Content-Length (None: a chunked body that crossed the limit) -> 413 JSON body
TooLargeBody = Callable[[int | None], bytes]
_JSON_HEADER = (b"content-type", b"application/json")


async def send_json(send: Callable, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON_HEADER, (b"content-length", b"%d" % len(payload))],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class HotRoutes:
    """Answers ``post``/``get`` paths itself; everything else goes to ``app``."""

    def __init__(
        self,
        app,
        *,
        post: dict[str, Handler],
        get: dict[str, Handler] | None = None,
        max_body_bytes: int,
        too_large: TooLargeBody,
        on_too_large: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.routes = {("POST", path): h for path, h in post.items()}
        self.routes.update({("GET", path): h for path, h in (get or {}).items()})
        self.limit = max_body_bytes
        self.too_large = too_large
        self.on_too_large = on_too_large

    async def __call__(self, scope, receive, send) -> None:
        handler = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            status, payload = handler(b"")
            await send_json(send, status, payload)
            return
        # Inlined rather than a helper coroutine: this runs for every prediction.
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await self._refuse(scope, send, int(value))
                    return
                break
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client went away: nobody to answer
        body = message.get("body", b"")
        size = len(body)
        if message.get("more_body", False):
            chunks = [body]
            while size <= limit and message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
            if size <= limit:
                body = b"".join(chunks)
        if size > limit:
            await self._refuse(scope, send, None)
            return
        status, payload = handler(body)
        await send_json(send, status, payload)

    async def _refuse(self, scope, send, declared: int | None) -> None:
        if self.on_too_large is not None:
            self.on_too_large(scope["path"])
        await send_json(send, 413, self.too_large(declared))


def json_media_type(content_type: bytes) -> bool:
    """``application/json`` or ``application/<x>+json``, any parameters (charset)."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def media_type_message(declared: bytes) -> str:
    """What the 415 says, the declared type cut to a readable length."""
    return f"Content-Type must be application/json, not {declared[:100].decode('latin-1')!r}"


class JsonBodies:
    """Raw ASGI, outermost: a POST that declares a body of another media type gets 415.

    Every POST route of the servers takes JSON. A form or ``text/plain`` body is the
    one a web page can send cross-origin without a CORS preflight, so accepting it
    would let any page a browser on the network opens post samples, or flush a
    trainer without a token. A POST without ``Content-Type`` is accepted (curl
    ``--data-binary``, clients that never set it), as FastAPI does."""

    def __init__(self, app, *, unsupported: Callable[[bytes], bytes]) -> None:
        self.app = app
        self.unsupported = unsupported  # the declared type -> the 415 JSON body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"content-type":
                    if not json_media_type(value):
                        await send_json(send, 415, self.unsupported(value))
                        return
                    break
        await self.app(scope, receive, send)
