"""`slocast serve --workers N` spreads connections over its workers (slocast.workers)."""

from __future__ import annotations

import pytest

from worker_connections import pids_of_connections


def test_connections_made_while_a_worker_is_busy_still_reach_it(server) -> None:
    if server.home is None or not server.workers or server.workers < 2:
        pytest.skip("needs a local server with several workers (their pids)")
    workers: set[int] = set()
    while len(workers) < server.workers:  # wait_ready saw them all: each answers soon
        with server.client() as client:
            workers.add(client.get("/v1/model").json()["pid"])
    pids = pids_of_connections(server.url, "/v1/model", "pid", busy_worker=min(workers))
    assert set(pids) == workers, pids
