"""Property-based fuzzing of both latency servers' OpenAPI operations: no 5xx, ever.

Valid (positive) and schema-violating (negative) requests for every operation of
the training and the prediction server, a bounded number of each. The servers are
a pair of their own (fuzzed samples would otherwise reach the shared trainer and
change the model other tests check); deployed servers are not fuzzed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from tests.latency.conftest import server_pair

EXAMPLES = 15
TOKEN = "fuzz-admin-token"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if os.environ.get("SLOCAST_LATENCY_PREDICTION_URL"):
        pytest.skip("fuzzing writes samples: only servers this session started")
    root: Path = tmp_path_factory.mktemp("latency-fuzz")
    with server_pair(root, {"SLOCAST_ADMIN_TOKEN": TOKEN}) as urls:
        yield urls


@pytest.mark.parametrize("server", ["training", "prediction"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(fuzzed: dict, server: str, mode: GenerationMode) -> None:
    url = fuzzed[server]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

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
            # With the admin token: the guarded routes (/flush, /reload) run too.
            response = case.call(
                base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"
                )

        try:
            call()
        except Unsatisfiable:  # negative mode: an operation without inputs cannot be violated
            assert mode == GenerationMode.NEGATIVE
    assert not failures, failures[:5]
