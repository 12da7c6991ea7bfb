"""Hot reload under load: no failed request, every worker ends on the new version."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import httpx

LOAD_THREADS = 4


def expected_workers(server) -> int:
    return server.workers or int(os.environ.get("SLOCAST_TEST_WORKERS", "1"))


def worker_versions(server, timeout: float = 5.0) -> dict[int, str]:
    """pid -> served version, from fresh connections until every worker answered."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < expected_workers(server):
        # A new connection each time: uvicorn workers share the listening socket.
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            info = client.get("/v1/model").json()
        seen[info["pid"]] = info["version"]
    return seen


def wait_all_workers_on(server, version: str, timeout: float = 60.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    seen: dict[int, str] = {}
    while time.monotonic() < deadline:
        seen = worker_versions(server)
        if len(seen) >= expected_workers(server) and set(seen.values()) == {version}:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"workers did not all reach v{version} in {timeout}s: {seen}")


def _promote(server, version: str) -> dict:
    registry = server.registry()
    registry.client.set_registered_model_alias(f"slocast-{server.task}", "champion", version)
    with server.client() as client:
        response = client.post("/v1/reload", headers=server.auth())
    assert response.status_code == 200, response.text
    return response.json()


def test_reload_under_load_reaches_every_worker(server, synthetic_history) -> None:
    registry = server.registry()
    name = f"slocast-{server.task}"
    before = registry.champion(server.task)
    # A new version of the same artifact: a new champion as far as serving can tell.
    new = registry.client.create_model_version(
        name, source=before.source, run_id=before.run_id, tags=before.tags
    )
    statuses: Counter = Counter()
    versions: Counter = Counter()
    errors: list[str] = []
    stop = threading.Event()
    body = {"history": synthetic_history}

    def hammer() -> None:
        while not stop.is_set():
            # Short-lived connections so both workers get traffic during the swap.
            with httpx.Client(base_url=server.url, timeout=30.0) as client:
                for _ in range(20):
                    try:
                        response = client.post("/v1/forecast", json=body)
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        versions[response.json()["model"]["version"]] += 1

    threads = [threading.Thread(target=hammer) for _ in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        outcome = _promote(server, str(new.version))
        assert outcome["outcome"] == "swapped", outcome
        assert outcome["version"] == str(new.version)
        seen = wait_all_workers_on(server, str(new.version))
        time.sleep(0.5)  # keep the load on the new version for a moment
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors[:5]
    assert set(statuses) == {200}, statuses
    assert versions[str(new.version)] > 0 and versions[before.version] > 0, versions
    assert len(seen) == expected_workers(server)

    # Back to the original champion, again in every worker.
    _promote(server, before.version)
    wait_all_workers_on(server, before.version)


def test_reload_is_unchanged_when_champion_unchanged(server) -> None:
    with server.client() as client:
        version = client.get("/v1/model").json()["version"]
        response = client.post("/v1/reload", headers=server.auth())
    assert response.status_code == 200
    assert response.json()["outcome"] == "unchanged"
    assert response.json()["version"] == version
