"""The admin bearer token check shared by every HTTP server (LTE and latency)."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme case-insensitive (RFC 9110 11.1),
    the token compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
