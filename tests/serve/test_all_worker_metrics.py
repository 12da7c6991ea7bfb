"""/metrics describes the whole server, whichever worker answers the scrape."""

from __future__ import annotations

import re

import httpx
import pytest

_INFO = re.compile(r"^slocast_model_info\{([^}]*)\} 1\.0$", re.M)
_FORECASTS = re.compile(r"^slocast_http_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


def _forecasts_answered(text: str) -> float:
    total = 0.0
    for labels, value in _FORECASTS.findall(text):
        if 'route="/v1/forecast"' in labels and 'status="200"' in labels:
            total += float(value)
    return total


def test_every_scrape_sums_all_workers(server, synthetic_history) -> None:
    if not server.workers or server.workers < 2:
        pytest.skip("needs the suite's own multi-worker server")
    before = _forecasts_answered(httpx.get(f"{server.url}/metrics").text)
    with server.client() as client:
        for _ in range(20):
            assert client.post("/v1/forecast", json={"history": synthetic_history}).is_success
    for _ in range(6):  # fresh connections: the scrapes land on different workers
        text = httpx.get(f"{server.url}/metrics").text
        assert _forecasts_answered(text) - before >= 20
        pids = {re.search(r'pid="(\d+)"', labels).group(1) for labels in _INFO.findall(text)}
        assert len(pids) == server.workers, text
