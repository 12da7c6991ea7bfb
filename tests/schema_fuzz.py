"""Property-based fuzzing of a live server's OpenAPI operations (schemathesis)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES = 15  # per operation and mode: the run stays well under a minute


def server_errors(
    url: str, mode: GenerationMode, min_operations: int, headers: dict | None = None
) -> list[str]:
    """Call every operation of ``url``'s OpenAPI document with ``EXAMPLES`` generated
    requests (valid ones in POSITIVE mode, schema-violating ones in NEGATIVE mode);
    return each 5xx answer as ``"METHOD path: status body"``."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= min_operations, [op.label for op in operations]

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def call(case) -> None:
            response = case.call(base_url=url, timeout=30, headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"
                )

        try:
            call()
        except Unsatisfiable:  # negative mode: an operation without inputs cannot be violated
            assert mode == GenerationMode.NEGATIVE
    return failures
