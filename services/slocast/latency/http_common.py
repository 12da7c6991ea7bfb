"""Small pieces both latency servers share at the HTTP edge."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from slocast.latency.schema import ValidationFailure


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
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return None
        raise ValidationFailure([{"type": "missing", "loc": ["body"], "msg": "Field required"}])
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailure(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", exc.pos],
                    "msg": f"JSON decode error: {exc.msg}",
                }
            ]
        ) from None


def install_validation_handler(app) -> None:
    async def handler(_: Request, exc: ValidationFailure) -> Response:
        return unprocessable(exc.errors)

    app.add_exception_handler(ValidationFailure, handler)
