"""The admin bearer token check every HTTP server uses."""

from __future__ import annotations

import pytest

from slocast.http_auth import bearer_matches


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("BEARER s3cret", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret ", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("", False),
    ],
)
def test_bearer_scheme_is_case_insensitive_and_the_token_exact(header: str, ok: bool) -> None:
    assert bearer_matches(header, "s3cret") is ok
