"""Property-based fuzzing of every operation in the OpenAPI schema: no 5xx, ever.

Both valid (positive) and schema-violating (negative) requests are generated for
each operation, a bounded number of each (tests/schema_fuzz.py).
"""

from __future__ import annotations

import pytest
from schemathesis import GenerationMode

from schema_fuzz import server_errors


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(server, mode) -> None:
    failures = server_errors(server.url, mode, min_operations=7)
    assert not failures, failures[:5]
