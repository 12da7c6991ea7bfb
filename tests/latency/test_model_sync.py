"""Prediction servers without the trainer's model directory download its models over
HTTP (upstream's topology: each prediction pod has its own storage and a
TRAINING_SERVER_URL)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.latency.conftest import free_port, start_server, stop, wait_healthy

from slocast.core.errors import ConfigError
from slocast.latency.bundle import publish, read_pointer
from slocast.latency.model_sync import SyncError, sync_once
from slocast.latency.schema import parse_features
from slocast.latency.serving import load_served_model
from slocast.latency.synthetic import generate, to_records
from slocast.settings import LatencyPredictionSettings

FEATURES = [
    {k: v for k, v in r.items() if not k.startswith("actual_")}
    for r in to_records(generate("long-prompts", 40, seed=9))
]


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A trainer on one directory; a 2-worker predictor on another, told only the
    trainer's URL under upstream's variable name."""
    root = tmp_path_factory.mktemp("sync")
    trainer_port, predictor_port = free_port(), free_port()
    base = {"SLOCAST_LATENCY_HOST": "127.0.0.1"}
    trainer_env = {
        **base,
        "SLOCAST_LATENCY_MODEL_DIR": str(root / "trainer"),
        "SLOCAST_LATENCY_TRAINING_PORT": str(trainer_port),
        "SLOCAST_LATENCY_RETRAIN_INTERVAL_S": "1",
    }
    training = f"http://127.0.0.1:{trainer_port}"
    predictor_env = {
        **base,
        "SLOCAST_LATENCY_MODEL_DIR": str(root / "predictor"),
        "SLOCAST_LATENCY_PREDICTION_PORT": str(predictor_port),
        "SLOCAST_LATENCY_WORKERS": "2",
        "TRAINING_SERVER_URL": training + "/",
        # Slow polling: a reload must not rely on the poll having run (see below).
        "SLOCAST_LATENCY_SYNC_INTERVAL_S": "3",
    }
    procs = [
        start_server("latency-trainer", trainer_env, root / "trainer.log"),
        start_server("latency-predictor", predictor_env, root / "predictor.log"),
    ]
    try:
        wait_healthy(training, procs[0])
        wait_healthy(f"http://127.0.0.1:{predictor_port}", procs[1])
        yield {
            "training": training,
            "prediction": f"http://127.0.0.1:{predictor_port}",
            "trainer_dir": root / "trainer",
            "predictor_dir": root / "predictor",
        }
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def synced(separate: dict) -> str:
    """Train on the trainer; the version every predictor worker then serves."""
    assert httpx.get(f"{separate['training']}/bundle/current").status_code == 404
    status = httpx.get(f"{separate['prediction']}/status").json()
    assert status["cold"] and status["model_sync"]["url"] == separate["training"]
    records = to_records(generate("long-prompts", 3000, seed=3))
    r = httpx.post(f"{separate['training']}/add_training_data_bulk", json={"entries": records})
    assert r.status_code == 202, r.text
    deadline, version, served = time.monotonic() + 90, None, {}
    while time.monotonic() < deadline:
        version = httpx.get(f"{separate['training']}/data/status").json()["model_version"]
        if version is not None:
            for _ in range(50):  # a new connection per call: both workers answer
                s = httpx.get(f"{separate['prediction']}/status").json()
                served[s["worker_pid"]] = None if s["cold"] else s["model_version"]
            if len(served) == 2 and set(served.values()) == {version}:
                return version
        time.sleep(0.2)
    raise AssertionError(f"trainer at {version}, predictor workers serve {served}")


def test_a_predictor_on_its_own_directory_serves_the_trainers_model(
    separate: dict, synced: str
) -> None:
    assert read_pointer(separate["trainer_dir"]).version == synced
    # The same bundle, byte for byte, and the same bounds as the trainer's copy.
    assert read_pointer(separate["predictor_dir"]) == read_pointer(separate["trainer_dir"])
    mine = httpx.post(f"{separate['prediction']}/predict/bulk/strict", json={"requests": FEATURES})
    theirs = load_served_model(
        separate["trainer_dir"], read_pointer(separate["trainer_dir"]), "xgboost"
    ).predict(parse_features(FEATURES))
    got = mine.json()["predictions"]
    np.testing.assert_allclose([p["ttft_ms"] for p in got], theirs["ttft"], rtol=1e-6)
    np.testing.assert_allclose([p["tpot_ms"] for p in got], theirs["tpot"], rtol=1e-6)


def test_reload_answers_once_every_worker_serves_the_trainers_newest_model(
    separate: dict, synced: str
) -> None:
    """Upstream's client retrains, calls /reload and predicts at once (its TIF stress
    test): the answer must wait until every worker serves the trainer's new model,
    though the predictor's own poll (every 3 s here) has not fetched it yet."""
    records = to_records(generate("long-prompts", 2000, seed=4))
    r = httpx.post(f"{separate['training']}/add_training_data_bulk", json={"entries": records})
    assert r.status_code == 202, r.text
    deadline, newest = time.monotonic() + 90, synced
    while newest == synced and time.monotonic() < deadline:
        time.sleep(0.05)
        newest = httpx.get(f"{separate['training']}/data/status").json()["model_version"]
    assert newest > synced, "the trainer published no new model"
    answer = httpx.post(f"{separate['prediction']}/reload", timeout=20).json()
    # (the trainer may have published once more meanwhile: versions sort by time)
    target = answer["newest_version"]
    assert target >= newest and answer["every_worker_serves"] is True, answer
    served = {}
    for _ in range(40):  # a new connection per call: both workers answer
        status = httpx.get(f"{separate['prediction']}/status").json()
        served[status["worker_pid"]] = status["model_version"]
    assert len(served) == 2 and min(served.values()) >= target, (target, served)


def test_bundle_endpoints(separate: dict, synced: str) -> None:
    """ETag and 304 for an unchanged model; only files the manifest lists are served."""
    current = httpx.get(f"{separate['training']}/bundle/current")
    assert current.status_code == 200 and current.json()["version"] >= synced
    etag = current.headers["etag"]
    assert etag == f'"{hashlib.sha256(current.content).hexdigest()}"'
    again = httpx.get(f"{separate['training']}/bundle/current", headers={"If-None-Match": etag})
    assert again.status_code == 304
    manifest = current.json()
    for name in manifest["files"]:
        body = httpx.get(f"{separate['training']}/bundle/{manifest['version']}/{name}").content
        assert hashlib.sha256(body).hexdigest() == manifest["files"][name]
    for version, name in (
        (manifest["version"], "manifest.json"),
        (manifest["version"], "nothing.ubj"),
        ("..", "CURRENT"),
        (manifest["version"], ".sync.lock"),
        ("20990101T000000-000000000", "ttft.ubj"),
    ):
        r = httpx.get(f"{separate['training']}/bundle/{version}/{name}")
        assert r.status_code == 404, (version, name)


# --- sync_once against answers the trainer would never give ---------------------------


class _Fake(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, body = self.routes.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"e"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[tuple[str, dict]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    _Fake.routes = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Fake.routes
    finally:
        server.shutdown()


def _offer(routes: dict, files: dict[str, bytes], listed: dict[str, bytes] | None = None) -> None:
    manifest = {
        "version": "v1",
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in (listed or files).items()},
    }
    routes["/bundle/current"] = (200, json.dumps(manifest).encode())
    for name, body in files.items():
        routes[f"/bundle/v1/{name}"] = (200, body)


def test_a_file_that_does_not_match_its_hash_is_never_published(fake, tmp_path: Path) -> None:
    url, routes = fake
    _offer(routes, {"ttft.ubj": b"tampered"}, listed={"ttft.ubj": b"original"})
    with pytest.raises(SyncError, match="SHA-256"):
        sync_once(url, tmp_path)
    assert not (tmp_path / "CURRENT").exists()
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == []  # no partial bundle left


@pytest.mark.parametrize("name", ["../CURRENT", ".hidden", "a/b", "", "x" * 200])
def test_unsafe_names_in_a_manifest_are_refused(fake, tmp_path: Path, name: str) -> None:
    url, routes = fake
    routes["/bundle/current"] = (200, json.dumps({"version": "v1", "files": {name: "0"}}).encode())
    with pytest.raises(SyncError, match="unsafe"):
        sync_once(url, tmp_path)
    assert not (tmp_path / "CURRENT").exists()


def test_sync_publishes_once_then_answers_unchanged(fake, tmp_path: Path) -> None:
    url, routes = fake
    assert sync_once(url, tmp_path) == (False, None)  # nothing trained yet (404)
    _offer(routes, {"ttft.ubj": b"trees"})
    assert sync_once(url, tmp_path) == (True, '"e"')
    assert (tmp_path / "bundles" / "v1" / "ttft.ubj").read_bytes() == b"trees"
    assert read_pointer(tmp_path).version == "v1"
    assert sync_once(url, tmp_path) == (False, '"e"')  # the same manifest: nothing to do
    routes["/bundle/current"] = (304, b"")
    assert sync_once(url, tmp_path, etag='"e"') == (False, '"e"')
    routes["/bundle/current"] = (500, b"")
    with pytest.raises(SyncError, match="HTTP 500"):
        sync_once(url, tmp_path)


def test_sync_never_replaces_a_newer_local_model(fake, tmp_path: Path) -> None:
    """In a directory shared with the trainer, the trainer may publish again between
    the answer and the check: the older answer must not take the pointer back."""
    url, routes = fake
    _offer(routes, {"ttft.ubj": b"trees"})
    newer = tmp_path / "bundles" / "v2"
    newer.mkdir(parents=True)
    (newer / "manifest.json").write_text(json.dumps({"version": "v2", "files": {}}))
    publish(tmp_path, newer)
    before = read_pointer(tmp_path)
    assert sync_once(url, tmp_path) == (False, '"e"')
    assert read_pointer(tmp_path) == before


def test_sync_url_settings() -> None:
    read = LatencyPredictionSettings.from_env
    assert read({}).sync_url is None
    assert read({"TRAINING_SERVER_URL": "http://t:8000/"}).sync_url == "http://t:8000"
    both = {"TRAINING_SERVER_URL": "http://t:8000", "SLOCAST_LATENCY_SYNC_URL": "https://s"}
    assert read(both).sync_url == "https://s"
    for bad in ("t:8000", "file:///etc", "http://", "http://t/?x=1"):
        with pytest.raises(ConfigError, match="SLOCAST_LATENCY_SYNC_URL"):
            read({"SLOCAST_LATENCY_SYNC_URL": bad})
