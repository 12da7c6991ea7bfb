"""Limits and admin endpoints of both latency servers (docs/latency.md).

- Bodies above ``SLOCAST_LATENCY_MAX_BODY_BYTES`` are a 413 with a JSON message, on
  every POST route of both servers (the prediction server's raw-ASGI hot routes
  included): refused from the declared ``Content-Length`` before reading, and a
  chunked body as soon as it crosses the limit (the server answers while the
  client has not even finished sending).
- ``POST /reload`` is token-protected like ``/flush``, answers at once, and a burst
  of reload requests causes at most two reloads, run off the request path while
  predictions keep being answered.
- Every ``$ref`` of both OpenAPI documents resolves; 401/413/422 are documented
  where they can happen; ``/metrics`` is documented as text/plain.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from tests.latency.test_http_api import FEATURES, SAMPLE

from slocast.latency import prediction_app, serving
from slocast.latency.bundle import publish, write_bundle
from slocast.latency.features import build_features, regimes
from slocast.latency.model import TARGET_COLUMNS, TARGET_PARAMS, TARGETS, fit_target_model
from slocast.latency.synthetic import generate
from slocast.settings import LATENCY_MAX_BODY_BYTES, LatencyPredictionSettings

LIMIT = int(os.environ.get("SLOCAST_LATENCY_MAX_BODY_BYTES", LATENCY_MAX_BODY_BYTES))
FLUSH_OPTIONS = ("flush_training_data", "flush_test_data", "flush_metrics")  # none: a no-op
# (server, path, a valid body): every POST route of both servers
POST_ROUTES = [
    ("prediction", "/predict", orjson.dumps(FEATURES)),
    ("prediction", "/predict/bulk", orjson.dumps({"requests": [FEATURES]})),
    ("prediction", "/predict/bulk/strict", orjson.dumps({"requests": [FEATURES]})),
    ("prediction", "/reload", b""),
    ("training", "/add_training_data_bulk", orjson.dumps({"entries": [SAMPLE]})),
    ("training", "/flush", orjson.dumps(dict.fromkeys(FLUSH_OPTIONS, False))),
]


def auth(servers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {servers['token']}"} if servers["token"] else {}


def raw_post(url: str, path: str, headers: dict[str, str], parts: Iterable[bytes]) -> tuple:
    """POST over a plain socket: send the head, then ``parts`` as they come, then read
    one response (status, JSON body). The body need not be complete or even sent."""
    split = urlsplit(url)
    with socket.create_connection((split.hostname, split.port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {split.netloc}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: read what it said
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without a response: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of the response"
            rest += chunk
        return int(lines[0].split()[1]), fields, orjson.loads(rest[:length])


def check_413(status: int, headers: dict, body: dict) -> None:
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    assert body["max_body_bytes"] == LIMIT
    assert "SLOCAST_LATENCY_MAX_BODY_BYTES" in body["detail"] and str(LIMIT) in body["detail"]


# --- body-size limit -------------------------------------------------------------------


@pytest.mark.parametrize(("server", "path", "body"), POST_ROUTES)
def test_declared_length_over_the_limit_is_413_before_reading(
    servers: dict[str, str], server: str, path: str, body: bytes
) -> None:
    """Only the head is sent: the 413 comes from the Content-Length alone."""
    headers = {"Content-Type": "application/json", "Content-Length": str(LIMIT + 1)}
    check_413(*raw_post(servers[server], path, headers, []))


@pytest.mark.parametrize(("server", "path", "body"), POST_ROUTES)
def test_chunked_body_over_the_limit_is_413_while_it_is_still_sent(
    servers: dict[str, str], server: str, path: str, body: bytes
) -> None:
    """Chunks beyond the limit, and never the final chunk: a server that buffered
    the whole body before checking would wait for the rest and never answer."""
    chunk = b" " * (1 << 20)
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (LIMIT // len(chunk) + 2)
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    check_413(*raw_post(servers[server], path, {**headers, **auth(servers)}, parts))


@pytest.mark.parametrize(("server", "path", "body"), POST_ROUTES)
def test_bodies_up_to_the_limit_are_read(
    servers: dict[str, str], server: str, path: str, body: bytes
) -> None:
    """A complete body one byte over the limit is a 413 (and the connection stays
    usable); the same body padded to exactly the limit is answered normally."""
    url = f"{servers[server]}{path}"
    padded = body + b" " * (LIMIT - len(body))
    with httpx.Client(headers={"content-type": "application/json", **auth(servers)}) as client:
        over = client.post(url, content=padded + b" ", timeout=60)
        check_413(over.status_code, over.headers, over.json())
        at = client.post(url, content=padded, timeout=60)
        assert at.status_code in (200, 202), at.text
        # chunked (no Content-Length) and under the limit: read to the end
        streamed = client.post(url, content=iter([body[:5], body[5:]]), timeout=60)
        assert streamed.status_code in (200, 202), streamed.text


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("server", "path", "body"), [r for r in POST_ROUTES if r[2]])
def test_deeply_nested_bodies_are_422_not_500(
    servers: dict[str, str], server: str, path: str, body: bytes
) -> None:
    """msgspec recurses per nesting level, also through unknown fields it skips: a
    200 kB body nested 100,000 deep once gave a 500 on every route."""
    bad_bodies = [DEEP, body[:-1] + b', "extra": ' + DEEP + b"}"]  # the latter: ignored field
    if b"[" in body:  # in front of the first item of a list
        bad_bodies.append(body.replace(b"[", b'[{"x": ' + DEEP + b"}, ", 1))
    with httpx.Client(headers={"content-type": "application/json", **auth(servers)}) as client:
        for bad in bad_bodies:
            r = client.post(f"{servers[server]}{path}", content=bad, timeout=30)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["type"] in ("json_invalid", "dict_type", "list_type")
        assert client.post(f"{servers[server]}{path}", content=body).status_code in (200, 202)


@pytest.mark.parametrize(("server", "path", "body"), POST_ROUTES)
def test_bodies_of_another_media_type_are_415(
    servers: dict[str, str], server: str, path: str, body: bytes
) -> None:
    """A form or text/plain POST (what a web page may send cross-origin without a
    preflight) is refused before any handler runs; JSON with a charset, or no
    Content-Type at all, is taken."""
    url = f"{servers[server]}{path}"
    with httpx.Client(headers=auth(servers)) as client:
        for declared in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            r = client.post(url, content=body, headers={"content-type": declared}, timeout=30)
            assert r.status_code == 415, (declared, r.text)
            assert declared in r.json()["detail"]
        for declared in ("application/json; charset=utf-8", "Application/JSON", None):
            headers = {"content-type": declared} if declared else {}
            r = client.post(url, content=body, headers=headers, timeout=30)
            assert r.status_code in (200, 202), (declared, r.text)


def test_limit_counts_every_chunk_in_process() -> None:
    """Both ASGI layers with a 10-byte limit and bodies delivered in pieces: at the
    limit the whole body reaches the handler, one byte more is a 413 and the rest
    is never asked for."""
    import asyncio

    from slocast.hot_routes import HotRoutes
    from slocast.latency.http_common import BodyLimit, too_large

    async def inner(scope, receive, send) -> None:  # reads like Request.body()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    refused: list[str] = []
    app = HotRoutes(
        BodyLimit(inner, max_body_bytes=10, on_too_large=refused.append),
        post={"/hot": lambda body: (200, body)},
        max_body_bytes=10,
        too_large=too_large(10),
        on_too_large=refused.append,
    )

    def call(path: str, pieces: list[bytes], headers=()) -> tuple[int, bytes, int]:
        messages = [
            {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
            for i, p in enumerate(pieces)
        ]
        asked, sent = [], []

        async def receive():
            asked.append(1)
            return messages[len(asked) - 1]

        async def send(message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
        asyncio.run(app(scope, receive, send))
        return sent[0]["status"], sent[1]["body"], len(asked)

    for path in ("/hot", "/other"):
        assert call(path, [b"0123", b"4567", b"89"]) == (200, b"0123456789", 3)
        status, body, asked = call(path, [b"0123", b"4567", b"890", b"never read"])
        assert status == 413 and orjson.loads(body)["max_body_bytes"] == 10 and asked == 3
        status, _, asked = call(path, [b"0123"], [(b"content-length", b"11")])
        assert status == 413 and asked == 0
    assert refused == ["/hot", "/hot", "/other", "/other"]


# --- POST /reload ----------------------------------------------------------------------


def test_reload_requires_the_admin_token(servers: dict[str, str]) -> None:
    if not servers["token"]:
        pytest.skip("the servers under test have no admin token configured")
    url = f"{servers['prediction']}/reload"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": servers["token"]}):
        r = httpx.post(url, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": "a valid admin bearer token is required"}
    r = httpx.post(url, headers=auth(servers))
    assert r.status_code == 200, r.text
    assert r.json()["reload"] in ("scheduled", "pending") and "is_ready" in r.json()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a published bundle."""
    root = tmp_path_factory.mktemp("published")
    cols = generate("extreme-contention", 3000, seed=0)
    x, regime_ids = build_features(cols), regimes(cols)
    models = {}
    for target in TARGETS:
        y = cols[TARGET_COLUMNS[target]]
        rows = (y > 0).nonzero()[0]
        fit, cal = rows[: int(0.8 * rows.shape[0])], rows[int(0.8 * rows.shape[0]) :]
        models[target] = fit_target_model(
            target, x[fit], y[fit], x[cal], y[cal], regime_ids[cal], 0.9, TARGET_PARAMS[target], 0
        )
    info = {"model_type": "xgboost", "objective_type": "t", "quantile": 0.9}
    model_dir = root / "models"
    bundle = write_bundle(model_dir, models, info)
    publish(model_dir, bundle)
    return model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving_in_thread(app) -> Iterator[str]:
    """The app on a real uvicorn server (one worker) in this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_reload_requests_coalesce_off_the_request_path(
    published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[float] = []
    loading = threading.Event()
    real_load = serving.load_served_model
    slow = 2.0  # seconds a reload takes here: longer than the burst of requests

    def counted_slow_load(*args, **kwargs):
        loads.append(time.monotonic())
        loading.set()
        try:
            time.sleep(slow)
            return real_load(*args, **kwargs)
        finally:
            loading.clear()

    monkeypatch.setattr(serving, "load_served_model", counted_slow_load)
    settings = LatencyPredictionSettings(
        host="127.0.0.1",
        port=0,
        workers=1,
        model_dir=published,
        watch_interval_s=0.05,
        quantile=0.9,
        cold_prior=True,
        admin_token="s3cret",
    )
    headers = {"Authorization": "Bearer s3cret"}

    def quiet(loaded: int = 1) -> None:
        """Wait for ``loaded`` loads in all, then until no reload has run for a while
        (the watcher polls every 0.05 s: a pending reload would have started)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (
                len(loads) >= loaded
                and not loading.is_set()
                and time.monotonic() - loads[-1] > slow + 0.5
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"expected {loaded} loads, then none: {loads}")

    with serving_in_thread(prediction_app.create_prediction_app(settings)) as url:
        quiet()
        assert len(loads) == 1  # the start-up load
        assert httpx.post(f"{url}/reload").status_code == 401
        assert (
            httpx.post(f"{url}/reload", headers={"Authorization": "Bearer no"}).status_code == 401
        )
        assert len(loads) == 1

        barrier = threading.Barrier(16)

        def reload(_: int) -> tuple[int, str, float]:
            barrier.wait()
            started = time.perf_counter()
            r = client.post(f"{url}/reload", headers=headers)
            return r.status_code, r.json().get("reload"), time.perf_counter() - started

        limits = httpx.Limits(max_connections=16)
        with httpx.Client(timeout=30, limits=limits) as client, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(reload, range(16)))
        assert {status for status, _, _ in answers} == {200}
        outcomes = [outcome for _, outcome, _ in answers]
        assert set(outcomes) <= {"scheduled", "pending"} and 1 <= outcomes.count("scheduled") <= 2
        # answered at once: the reload (1 s here) does not run in the request
        assert max(seconds for _, _, seconds in answers) < slow / 2, answers

        # predictions keep coming while a reload runs
        assert loading.wait(5)
        started = time.perf_counter()
        r = httpx.post(f"{url}/predict", json=FEATURES, timeout=30)
        assert r.status_code == 200 and time.perf_counter() - started < slow / 2
        assert loading.is_set(), "the reload should still be running"

        quiet(loaded=2)
        assert 2 <= len(loads) <= 3, loads  # start-up + at most two for 16 requests
        status = httpx.get(f"{url}/status").json()
        assert status["is_ready"] and not status["cold"]

        # a read-only model volume: RELOAD cannot be written, this worker reloads
        def read_only(_model_dir: Path) -> None:
            raise PermissionError("read-only file system")

        monkeypatch.setattr(prediction_app, "request_reload", read_only)
        before = len(loads)
        r = httpx.post(f"{url}/reload", headers=headers)
        assert r.status_code == 200 and r.json()["reload"] == "scheduled"
        quiet(loaded=before + 1)
        assert len(loads) == before + 1
        metrics = httpx.get(f"{url}/metrics").text
        assert f'slocast_latency_model_loads{{worker="{os.getpid()}"}} {float(len(loads))}' in (
            metrics
        )


# --- OpenAPI ---------------------------------------------------------------------------


def refs(node, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield where, value
            else:
                yield from refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from refs(value, f"{where}/{i}")


def resolve(doc: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.parametrize("server", ["prediction", "training"])
def test_openapi_refs_resolve_and_errors_are_documented(
    servers: dict[str, str], server: str
) -> None:
    doc = httpx.get(f"{servers[server]}/openapi.json").json()
    found = list(refs(doc))
    assert len(found) > 10
    for where, ref in found:
        try:
            resolve(doc, ref)
        except (KeyError, TypeError, IndexError):
            pytest.fail(f"{ref} (at {where}) does not resolve")
    paths = doc["paths"]
    expected = {
        "prediction": {
            ("post", "/predict"): {413, 415, 422, 503},
            ("post", "/predict/bulk"): {413, 415, 422, 503},
            ("post", "/predict/bulk/strict"): {413, 415, 422, 503},
            ("post", "/reload"): {401, 413, 415},
            ("get", "/readyz"): {503},
        },
        "training": {
            ("post", "/add_training_data_bulk"): {413, 415, 422, 503},
            ("post", "/flush"): {401, 413, 415, 422},
            ("get", "/model/{name}/info"): {404},
            ("get", "/model/{name}/download"): {404},
            ("get", "/bundle/current"): {404, 503},
            ("get", "/bundle/{version}/{name}"): {404},
            ("get", "/model/ttft/xgb/json"): {404},
            ("get", "/readyz"): {503},
        },
    }[server]
    for (method, path), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert {str(s) for s in statuses} <= set(responses), (path, set(responses))
        for status in statuses:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert "properties" in resolve(doc, schema["$ref"])
    if server == "training":
        assert "304" in paths["/bundle/current"]["get"]["responses"]
    # the bodies the handlers parse themselves are documented, nested items included
    body = "BulkPredictionRequest" if server == "prediction" else "BulkTrainingRequest"
    schema = resolve(doc, "#/components/schemas/" + body)
    items = next(iter(schema["properties"].values()))["items"]
    item = resolve(doc, items["$ref"])
    assert item["properties"]["input_token_length"]["maximum"] == 1e7
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
    assert httpx.get(f"{servers[server]}/metrics").headers["content-type"].startswith("text/plain")


def test_workers_note_what_they_serve_beside_the_models_or_in_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/reload` waits on these notes (one per worker); a read-only model volume, as
    the manifests mount it, moves them to the temp dir rather than losing them."""
    models = tmp_path / "models"
    registry = serving.serving_registry(models)
    assert registry == models / serving.SERVING_DIR
    assert serving.record_serving(registry, "20260101T000000-000000001")
    assert serving.workers_serving(registry) == {os.getpid(): "20260101T000000-000000001"}
    # a worker that died without cleaning up is forgotten, its note removed
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = registry / f"{socket.gethostname()}-{dead.pid}"
    stale.write_text("20250101T000000-000000001")
    assert set(serving.workers_serving(registry)) == {os.getpid()} and not stale.exists()
    # a killed worker's pid reused by a live process (not a worker): its note records
    # another start time, or none, and is removed too; /reload would otherwise wait on it
    other = subprocess.Popen(["sleep", "30"])
    try:
        for note in ("20250101T000000-000000001\n1", "20250101T000000-000000001"):
            reused = registry / f"{socket.gethostname()}-{other.pid}"
            reused.write_text(note)
            assert set(serving.workers_serving(registry)) == {os.getpid()}
            assert not reused.exists()
    finally:
        other.kill()
        other.wait()
    assert serving.serves_at_least("20260101T000000-000000001", "20260101T000000-000000001")
    assert not serving.serves_at_least(serving.PRIOR_VERSION, "20260101T000000-000000001")
    serving.forget_serving(registry)
    assert serving.workers_serving(registry) == {}

    monkeypatch.setattr(serving.os, "access", lambda *_: False)  # a read-only volume
    monkeypatch.setattr(serving.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    fallback = serving.serving_registry(models)
    assert fallback.parent == tmp_path / "tmp" and fallback == serving.serving_registry(models)
    assert serving.record_serving(fallback, "v") and serving.workers_serving(fallback) == {
        os.getpid(): "v"
    }
