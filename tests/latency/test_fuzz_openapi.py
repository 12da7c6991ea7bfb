"""Property-based fuzzing of both latency servers' OpenAPI operations: no 5xx, ever.

Valid (positive) and schema-violating (negative) requests for every operation of
the training and the prediction server, a bounded number of each
(tests/schema_fuzz.py). The servers are a pair of their own (fuzzed samples would
otherwise reach the shared trainer and change the model other tests check);
deployed servers are not fuzzed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from schemathesis import GenerationMode
from tests.latency.conftest import server_pair

from schema_fuzz import server_errors

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
    # With the admin token: the guarded routes (/flush, /reload) run too.
    headers = {"Authorization": f"Bearer {TOKEN}"}
    failures = server_errors(fuzzed[server], mode, min_operations=8, headers=headers)
    assert not failures, failures[:5]
