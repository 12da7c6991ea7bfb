"""What clients of the upstream llm-d latency predictor rely on, from a cold start.

One fresh pair of servers (empty model directory, no token), driven the way a
router and an operator would: ready at once with the documented prior (flagged
cold), the upstream status/metrics/model endpoints, then replaced by a trained
model whose downloadable document reproduces what the predictor serves.
(scripts/upstream-latency-tests.sh runs the upstream's own test file.)
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families
from tests.latency.conftest import served_versions, server_pair

from slocast.core.conformal import MondrianCalibration
from slocast.latency.features import FEATURE_NAMES, build_features, regimes
from slocast.latency.model import point_from_raw, upper_bound
from slocast.latency.schema import parse_features
from slocast.latency.synthetic import generate, to_records

FEATURES = {
    "kv_cache_percentage": 0.4,
    "input_token_length": 800,
    "num_request_waiting": 2,
    "num_request_running": 6,
    "num_tokens_generated": 3,
    "prefix_cache_score": 0.2,
}
UPSTREAM_MODEL_TYPES = {"bayesian_ridge", "xgboost", "lightgbm"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.environ.get("SLOCAST_LATENCY_PREDICTION_URL"):
        pytest.skip("needs freshly started servers with an empty model directory")
    root: Path = tmp_path_factory.mktemp("cold-pair")
    started = time.monotonic()
    with server_pair(root, {"SLOCAST_ADMIN_TOKEN": ""}) as urls:
        yield {**urls, "started": started}


def ready_within(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def strict(fresh: dict, items: list[dict]) -> list[dict]:
    r = httpx.post(f"{fresh['prediction']}/predict/bulk/strict", json={"requests": items})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def metric_samples(text: str) -> dict[str, list]:
    """Samples per family name; parsing fails on invalid exposition format."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


# --- cold: the prior ----------------------------------------------------------------


def test_cold_predictor_is_ready_and_flags_the_prior(fresh: dict) -> None:
    assert ready_within(fresh["prediction"], 5), "a fresh predictor must turn ready at once"
    status = httpx.get(f"{fresh['prediction']}/status").json()
    assert status["is_ready"] is True and status["cold"] is True
    assert status["model_version"] == "prior" and status["engines"] == {
        "ttft": "prior",
        "tpot": "prior",
    }
    assert status["models_exist"] == {"ttft": False, "tpot": False}
    assert status["ensemble_active"] is False
    assert status["objective_type"] == "quantile" and status["model_type"] in UPSTREAM_MODEL_TYPES
    one = httpx.post(f"{fresh['prediction']}/predict", json=FEATURES).json()
    assert one["cold"] is True and one["ttft_ms"] > 0 and one["tpot_ms"] > 0
    assert one["objective_type"] == "quantile"
    root = httpx.get(f"{fresh['prediction']}/").json()
    assert root["cold"] is True and root["objective_type"] == "quantile"


@pytest.mark.parametrize(
    "field",
    [
        "input_token_length",
        "num_request_waiting",
        "num_request_running",
        "prefill_tokens_in_flight",
        "decode_tokens_in_flight",
        "kv_cache_percentage",
    ],
)
def test_prior_never_drops_when_load_grows(fresh: dict, field: str) -> None:
    values = [0.0, 0.25, 0.5, 1.0] if field == "kv_cache_percentage" else [0, 1, 10, 100, 10_000]
    preds = strict(fresh, [{**FEATURES, field: v} for v in values])
    for target in ("ttft_ms", "tpot_ms"):
        series = [p[target] for p in preds]
        assert all(b >= a for a, b in zip(series[:-1], series[1:], strict=True)), (
            field,
            target,
            series,
        )
    # every load input the prior names moves at least one target
    assert preds[-1]["ttft_ms"] > preds[0]["ttft_ms"] or preds[-1]["tpot_ms"] > preds[0]["tpot_ms"]


def test_training_server_before_any_model(fresh: dict) -> None:
    base = fresh["training"]
    listed = httpx.get(f"{base}/models/list").json()
    assert set(listed["models"]) == {"ttft", "tpot", "ttft_gated", "tpot_gated"}
    assert all(not m["exists"] and m["size_bytes"] == 0 for m in listed["models"].values())
    assert "server_time" in listed and listed["model_type"] in UPSTREAM_MODEL_TYPES
    for path in ("/model/ttft/info", "/model/tpot/download", "/model/ttft/xgb/json"):
        r = httpx.get(f"{base}{path}")
        assert r.status_code == 404 and "trained" in r.json()["detail"], (path, r.text)
    unknown = httpx.get(f"{base}/model/bogus/info")
    assert unknown.status_code == 404 and "known: ttft" in unknown.json()["detail"]
    info = httpx.get(f"{base}/model/download/info").json()
    assert info["available_endpoints"]["trees"] == {
        "ttft_trees": "/model/ttft/xgb/json",
        "tpot_trees": "/model/tpot/xgb/json",
    }
    assert info["model_status"] == {"ttft_model_ready": False, "tpot_model_ready": False}
    root = httpx.get(f"{base}/").json()
    assert root["objective_type"] == "quantile" and root["model_type"] == info["model_type"]
    status = httpx.get(f"{base}/data/status").json()
    assert status["ensemble"] == {"ensemble_mode": False, "ensemble_active": False}
    assert {"bucket_distribution", "metrics"} <= set(status)


def test_training_metrics_carry_the_upstream_families(fresh: dict) -> None:
    text = httpx.get(f"{fresh['training']}/metrics").text
    # upstream clients match these literally
    for literal in ('model_type{type="xgboost"} 1', "ensemble_active{} 0", "ensemble_mode{} 0"):
        assert literal in text
    families = metric_samples(text)
    for target in ("ttft", "tpot"):
        features = {s.labels["feature"] for s in families[f"{target}_importance"]}
        assert features == set(FEATURE_NAMES)
    assert {s.labels["model"] for s in families["training_samples_count"]} == {"ttft", "tpot"}
    assert "slocast_latency_samples_ingested" in families  # ours, beside them


# --- trained: the prior is replaced ---------------------------------------------------


@pytest.fixture(scope="module")
def trained(fresh: dict) -> dict:
    """Post samples of a known law; wait until every worker serves a trained model."""
    records = to_records(generate("sharegpt-like", 3000, seed=5))
    r = httpx.post(f"{fresh['training']}/add_training_data_bulk", json={"entries": records})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        served = served_versions(fresh)
        if len(served) == fresh["workers"] and None not in served.values():
            return httpx.get(f"{fresh['prediction']}/status").json()
        time.sleep(0.2)
    raise AssertionError("the prior was not replaced by a trained model within 90 s")


def test_trained_model_replaces_the_prior(fresh: dict, trained: dict) -> None:
    assert trained["model_version"] != "prior" and trained["models_exist"] == {
        "ttft": True,
        "tpot": True,
    }
    assert trained["objective_type"] == "quantile"
    assert set(trained["objectives"]) == {"ttft", "tpot"}
    one = httpx.post(f"{fresh['prediction']}/predict", json=FEATURES).json()
    assert one["cold"] is False
    assert httpx.get(f"{fresh['prediction']}/").json()["cold"] is False


def test_model_files_describe_what_is_served(fresh: dict, trained: dict) -> None:
    base = fresh["training"]
    listed = httpx.get(f"{base}/models/list").json()["models"]
    assert listed["ttft_gated"]["exists"] is False
    items = [
        {**FEATURES, "input_token_length": n, "num_request_waiting": w, "kv_cache_percentage": kv}
        for n, w, kv in [(50, 0, 0.1), (800, 2, 0.4), (3000, 9, 0.8), (12000, 30, 0.95)]
    ]
    served = strict(fresh, items)
    cols = parse_features(items)
    for target in ("ttft", "tpot"):
        info = httpx.get(f"{base}/model/{target}/info").json()
        download = httpx.get(f"{base}/model/{target}/download")
        assert download.status_code == 200
        assert (
            info["exists"]
            and info["size_bytes"] == len(download.content) == (listed[target]["size_bytes"])
        )
        assert info["model_version"] == trained["model_version"]
        doc = json.loads(download.content)
        assert doc["features"] == list(FEATURE_NAMES) and doc["target"] == target
        booster = xgb.Booster()
        booster.load_model(bytearray(json.dumps(doc["xgboost_model"]).encode()))
        raw = booster.inplace_predict(build_features(cols)).astype(np.float64)
        point = point_from_raw(raw, doc["objective"])
        calibration = MondrianCalibration.from_dict(doc["calibration"])
        bound = upper_bound(point, calibration, regimes(cols), doc["point_floor_ms"])
        got = np.array([p[f"{target}_ms"] for p in served])
        np.testing.assert_allclose(bound, got, rtol=1e-5)

        dump = httpx.get(f"{base}/model/{target}/xgb/json").json()
        assert isinstance(dump, list) and all("nodeid" in tree for tree in dump)
        assert len(dump) == booster.num_boosted_rounds()


def test_importances_after_training(fresh: dict, trained: dict) -> None:
    families = metric_samples(httpx.get(f"{fresh['training']}/metrics").text)
    for target in ("ttft", "tpot"):
        shares = {s.labels["feature"]: s.value for s in families[f"{target}_importance"]}
        assert shares["prefix_cache_score"] >= 0
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    counts = sum(s.value for s in families["training_samples_count"] if s.labels["model"] == "ttft")
    status = httpx.get(f"{fresh['training']}/data/status").json()
    assert counts == status["training_data"]["ttft_samples"] > 0
    assert sum(status["bucket_distribution"].values()) == counts
    info = httpx.get(f"{fresh['training']}/model/download/info").json()
    assert info["model_status"] == {"ttft_model_ready": True, "tpot_model_ready": True}


# --- the router's Go client ---------------------------------------------------------

# Go's encoding/json ignores unknown keys but fails a whole response on a type it
# cannot decode into: time.Time needs RFC 3339 with a zone, an int field an integer,
# map[string]bool booleans. The router's client (llm-d-router,
# latencypredictorclient/types.go) reads these fields from these endpoints.
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def go_time(value: object, nullable: bool = False) -> bool:
    return (nullable and value is None) or (isinstance(value, str) and bool(RFC3339.match(value)))


def go_prediction(p: dict) -> None:
    assert isinstance(p["ttft_ms"], float) and isinstance(p["tpot_ms"], float), p
    assert p["ttft_ms"] > 0 and p["tpot_ms"] > 0
    assert go_time(p["predicted_at"]) and go_time(p["last_model_load"], nullable=True), p
    assert isinstance(p["model_type"], str) and p["model_type"] in UPSTREAM_MODEL_TYPES
    assert isinstance(p["objective_type"], str) and 0 < p["quantile"] < 1


def go_counters(body: dict, n: int) -> None:
    for key in ("total_requests", "successful_predictions", "failed_predictions"):
        assert type(body[key]) is int, (key, body[key])
    assert body["total_requests"] == body["successful_predictions"] == n
    assert isinstance(body["processing_time_ms"], float)


def router_view(fresh: dict) -> None:
    """Every answer the router's client decodes, checked against its Go types."""
    status = httpx.get(f"{fresh['prediction']}/status").json()
    assert status["is_ready"] is True and status["model_type"] in UPSTREAM_MODEL_TYPES
    assert go_time(status["last_model_load"], nullable=True)
    assert all(type(v) is bool for v in status["models_exist"].values())
    info = httpx.get(f"{fresh['training']}/model/download/info").json()
    assert info["model_type"] == status["model_type"]  # both sources must agree
    assert all(type(v) is bool for v in info["model_status"].values())
    assert 0 < info["quantile"] < 1
    go_prediction(httpx.post(f"{fresh['prediction']}/predict", json=FEATURES).json())
    items = [{**FEATURES, "prefix_cache_score": s} for s in (0.0, 0.5, 1.0)]
    for path in ("/predict/bulk", "/predict/bulk/strict"):
        body = httpx.post(f"{fresh['prediction']}{path}", json={"requests": items}).json()
        go_counters(body, len(items))
        for p in body["predictions"]:
            go_prediction(p)


def test_router_client_decodes_the_cold_answers(fresh: dict) -> None:
    router_view(fresh)


def test_router_client_training_batch_and_trained_answers(fresh: dict, trained: dict) -> None:
    # The client's TrainingEntry as Go marshals it: timestamps in RFC 3339 with
    # nanoseconds (or the zero time), its drift fields, encoder sizes, pod_type
    # omitted when monolithic.
    entries = []
    for i, record in enumerate(to_records(generate("sharegpt-like", 40, seed=11))):
        record.pop("pod_type", None)
        stamp = "0001-01-01T00:00:00Z" if i % 2 else "2026-12-07T07:05:42.123456789Z"
        entries.append(
            {**record, "timestamp": stamp, "predicted_ttft_ms": 12.5, "encoder_input_size": 0}
        )
    r = httpx.post(f"{fresh['training']}/add_training_data_bulk", json={"entries": entries})
    assert r.status_code == 202, r.text  # the client counts only 202 as delivered
    router_view(fresh)
    for target in ("ttft", "tpot"):  # cached by the client; it fails if absent
        dump = httpx.get(f"{fresh['training']}/model/{target}/xgb/json")
        assert dump.status_code == 200 and isinstance(dump.json(), list) and dump.json()
