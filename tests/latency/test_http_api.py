"""Black-box HTTP tests of the latency API contract (latency-api.md).

Run against the servers of the ``servers`` fixture (real subprocesses, or deployed
services named by SLOCAST_LATENCY_TRAINING_URL / SLOCAST_LATENCY_PREDICTION_URL).
Every case that depends on data starts from a flush, so cases are isolated.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from tests.latency.conftest import served_versions

from slocast.latency.synthetic import generate, to_records, tpot_mean_ms, ttft_mean_ms

FEATURES = {
    "kv_cache_percentage": 0.3,
    "input_token_length": 512,
    "num_request_waiting": 1,
    "num_request_running": 8,
    "num_tokens_generated": 0,
    "prefix_cache_score": 0.0,
}
SAMPLE = {**FEATURES, "actual_ttft_ms": 250.0, "actual_tpot_ms": 20.0}
# The medians of the `learned` fixture's data (extreme-contention): checks of what the
# fitted model does are made here, where it has seen data.
TYPICAL = {
    **FEATURES,
    "kv_cache_percentage": 0.8,
    "input_token_length": 415,
    "num_request_waiting": 100,
    "num_request_running": 140,
}
PREDICTION_FIELDS = {
    "cold",
    "ttft_ms",
    "tpot_ms",
    "predicted_at",
    "model_type",
    "objective_type",
    "quantile",
    "last_model_load",
}
FLUSH_FIELDS = {
    "success",
    "flushed_at",
    "reason",
    "ttft_training_samples_flushed",
    "tpot_training_samples_flushed",
    "ttft_test_samples_flushed",
    "tpot_test_samples_flushed",
    "metrics_cleared",
    "message",
}


def auth(servers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {servers['token']}"} if servers["token"] else {}


def flush(servers: dict[str, str]) -> dict:
    r = httpx.post(f"{servers['training']}/flush", headers=auth(servers), json={"reason": "test"})
    assert r.status_code == 200, r.text
    return r.json()


def post_samples(servers: dict[str, str], records: list[dict]) -> None:
    for start in range(0, len(records), 10_000):
        r = httpx.post(
            f"{servers['training']}/add_training_data_bulk",
            json={"entries": records[start : start + 10_000]},
            timeout=30,
        )
        assert r.status_code == 202, r.text


def wait_for_new_model(servers: dict[str, str], flushed_at: str, timeout: float = 90) -> str:
    """Wait until the trainer publishes a model fitted on data posted after the
    flush at ``flushed_at`` and every prediction worker serves it (versions sort by
    time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{servers['training']}/data/status").json()
        trained = status["model_version"]
        if status["model_data_since"] == flushed_at:
            served = served_versions(servers)
            if len(served) == (servers["workers"] or len(served)) and all(
                v is not None and v >= trained for v in served.values()
            ):
                return min(served.values())
        time.sleep(0.2)
    raise AssertionError(f"no model trained after the flush at {flushed_at} served in {timeout}s")


def strict(servers: dict[str, str], items: list[dict]) -> httpx.Response:
    return httpx.post(
        f"{servers['prediction']}/predict/bulk/strict", json={"requests": items}, timeout=30
    )


# --- health, readiness, metrics ------------------------------------------------------


def test_health_and_metrics(servers: dict[str, str]) -> None:
    for base in (servers["training"], servers["prediction"]):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        text = httpx.get(f"{base}/metrics").text
        assert "# HELP" in text and "# TYPE" in text
    assert httpx.get(f"{servers['training']}/readyz").json() == {"status": "ready"}
    info = httpx.get(f"{servers['training']}/model/download/info").json()
    assert {"model_type", "quantile"} <= set(info)


def test_no_model_answers_503(empty_predictor: str) -> None:
    """With the cold-start prior off (test_upstream_compat covers it on), a predictor
    without a trained model is not ready and says why."""
    assert httpx.get(f"{empty_predictor}/readyz").json()["reason"].startswith("no model")
    assert httpx.get(f"{empty_predictor}/readyz").status_code == 503
    status = httpx.get(f"{empty_predictor}/status").json()
    assert status["is_ready"] is False
    # clients branch on the objective before any model exists (it was null)
    assert status["objective_type"] == "quantile" and status["quantile"] == 0.9
    assert httpx.get(f"{empty_predictor}/").json()["objective_type"] == "quantile"
    assert httpx.post(f"{empty_predictor}/predict", json=FEATURES).status_code == 503
    body = {"requests": [FEATURES]}
    assert httpx.post(f"{empty_predictor}/predict/bulk", json=body).status_code == 503
    assert httpx.post(f"{empty_predictor}/predict/bulk/strict", json=body).status_code == 503
    reload = httpx.post(f"{empty_predictor}/reload").json()  # no admin token configured
    assert reload["is_ready"] is False and reload["reload"] == "scheduled"
    # invalid input is still a 422, model or not
    assert httpx.post(f"{empty_predictor}/predict", json={}).status_code == 422


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", {k: v for k, v in FEATURES.items() if k != "input_token_length"}),
        ("/predict", {**FEATURES, "kv_cache_percentage": 1.2}),
        ("/predict", {**FEATURES, "num_request_waiting": "many"}),
        ("/predict", {**FEATURES, "pod_type": "gpu"}),
        ("/predict", [FEATURES]),
        ("/predict/bulk/strict", {"requests": []}),
        (
            "/predict/bulk/strict",
            {"requests": [FEATURES, {**FEATURES, "prefill_tokens_in_flight": -1}]},
        ),
        ("/predict/bulk/strict", {"wrong": [FEATURES]}),
        ("/predict/bulk", {"requests": [FEATURES] * 10_001}),
        ("/predict/bulk", {"requests": "not a list"}),
    ],
)
def test_prediction_422(servers: dict[str, str], path: str, body) -> None:
    r = httpx.post(f"{servers['prediction']}{path}", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


@pytest.mark.parametrize(
    ("server", "path", "body", "loc"),
    [
        ("prediction", "/predict", {**FEATURES, "input_token_length": 1e308}, None),
        (
            "prediction",
            "/predict/bulk",
            {"requests": [FEATURES, {**FEATURES, "num_request_waiting": 1e308}]},
            ["body", "requests", 1, "num_request_waiting"],
        ),
        (
            "prediction",
            "/predict/bulk/strict",
            {"requests": [FEATURES, {**FEATURES, "decode_tokens_in_flight": 1e308}]},
            ["body", "requests", 1, "decode_tokens_in_flight"],
        ),
        (
            "training",
            "/add_training_data_bulk",
            {"entries": [SAMPLE, {**SAMPLE, "actual_ttft_ms": 1e308}]},
            ["body", "entries", 1, "actual_ttft_ms"],
        ),
        (
            "training",
            "/add_training_data_bulk",
            {"entries": [SAMPLE, {**SAMPLE, "input_token_length": 1e308}]},
            ["body", "entries", 1, "input_token_length"],
        ),
    ],
)
def test_huge_values_are_422_naming_field_and_range(
    servers: dict[str, str], server: str, path: str, body: dict, loc: list | None
) -> None:
    """1e308 is a finite JSON number: it once passed validation (and the kernel's
    parser), and one such sample made every retrain fail until a flush."""
    r = httpx.post(f"{servers[server]}{path}", json=body, timeout=30)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    field = detail["loc"][-1]
    if loc is not None:
        assert detail["loc"] == loc
    assert detail["type"] == "less_than_equal" and detail["input"] == 1e308
    assert detail["msg"].startswith("Input should be between 0 and ") and field in detail["msg"]


def test_malformed_json_is_422(servers: dict[str, str]) -> None:
    for base, path in (
        (servers["prediction"], "/predict"),
        (servers["training"], "/add_training_data_bulk"),
    ):
        r = httpx.post(
            f"{base}{path}", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422


def test_strict_422_names_index_and_field(servers: dict[str, str]) -> None:
    items = [FEATURES, FEATURES, {**FEATURES, "decode_tokens_in_flight": 1.5}]
    detail = strict(servers, items).json()["detail"][0]
    assert detail["loc"] == ["body", "requests", 2, "decode_tokens_in_flight"]


@pytest.mark.parametrize(
    "entry",
    [
        {**FEATURES, "actual_ttft_ms": 10.0},  # actual_tpot_ms missing
        {**FEATURES, "actual_ttft_ms": -1.0, "actual_tpot_ms": 1.0},
        {**FEATURES, "actual_ttft_ms": 1.0, "actual_tpot_ms": 1.0, "prefix_cache_score": 2},
    ],
)
def test_training_422(servers: dict[str, str], entry: dict) -> None:
    r = httpx.post(f"{servers['training']}/add_training_data_bulk", json={"entries": [entry]})
    assert r.status_code == 422
    assert (
        httpx.post(
            f"{servers['training']}/add_training_data_bulk", json={"entries": []}
        ).status_code
        == 422
    )


# --- flush ---------------------------------------------------------------------------


def test_flush_requires_token(servers: dict[str, str]) -> None:
    if not servers["token"]:
        pytest.skip("the servers under test have no admin token configured")
    url = f"{servers['training']}/flush"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, headers=auth(servers)).status_code == 200


def test_flush_semantics(servers: dict[str, str]) -> None:
    flush(servers)
    post_samples(servers, to_records(generate("sharegpt-like", 400, seed=3)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = httpx.get(f"{servers['training']}/data/status").json()
        if status["training_data"]["total_samples"] + status["test_data"]["total_samples"] == 400:
            break
        time.sleep(0.1)
    train, test = status["training_data"], status["test_data"]
    assert train["total_samples"] == train["ttft_samples"] + train["tpot_samples"] > 0
    assert test["total_samples"] > 0 and "model_ready" in status and "last_retrain" in status

    url = f"{servers['training']}/flush"
    r = httpx.post(
        url,
        headers=auth(servers),
        json={"flush_training_data": False, "flush_test_data": False, "flush_metrics": False},
    )
    assert r.json()["message"] == "No data flushed"
    r = httpx.post(url, headers=auth(servers), json={"flush_training_data": "yes"})
    assert r.status_code == 422

    result = httpx.post(
        url, headers=auth(servers), json={"flush_test_data": False, "reason": "r1"}
    ).json()
    assert set(result) >= FLUSH_FIELDS and result["success"] is True and result["reason"] == "r1"
    assert result["ttft_training_samples_flushed"] == train["ttft_samples"]
    assert result["tpot_training_samples_flushed"] == train["tpot_samples"]
    assert result["ttft_test_samples_flushed"] == 0
    assert result["message"].startswith("Successfully flushed")
    status = httpx.get(f"{servers['training']}/data/status").json()
    assert status["training_data"]["total_samples"] == 0
    assert status["test_data"]["total_samples"] == test["total_samples"]
    result = flush(servers)
    assert (
        result["ttft_test_samples_flushed"] + result["tpot_test_samples_flushed"]
        == test["total_samples"]
    )


# --- learning ------------------------------------------------------------------------


def sweep(base: dict, field: str, values: list) -> list[dict]:
    return [{**base, field: v} for v in values]


@pytest.fixture(scope="module")
def learned(servers: dict[str, str]) -> dict:
    """Flush, stream samples of a known law, wait for the retrained model."""
    flushed_at = flush(servers)["flushed_at"]
    post_samples(servers, to_records(generate("extreme-contention", 10_000, seed=11)))
    version = wait_for_new_model(servers, flushed_at)
    return {"version": version}


def test_learns_the_law_with_calibrated_p90(servers: dict[str, str], learned: dict) -> None:
    fresh = generate("extreme-contention", 4000, seed=12)
    records = to_records(fresh)
    response = strict(servers, records)
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    for target, column in (("ttft_ms", "actual_ttft_ms"), ("tpot_ms", "actual_tpot_ms")):
        y = fresh[column]
        p = np.array([row[target] for row in preds])
        observed = y > 0
        cover = float(np.mean(y[observed] <= p[observed]))
        assert 0.85 <= cover <= 0.95, (target, cover)
    # the bound follows the law, not a constant: strong rank correlation
    for target, law in (("ttft_ms", ttft_mean_ms(fresh)), ("tpot_ms", tpot_mean_ms(fresh))):
        p = np.array([row[target] for row in preds])
        ranks = np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(law)))[0, 1]
        assert ranks > 0.8, (target, ranks)


def test_monotone_in_load(servers: dict[str, str], learned: dict) -> None:
    """With SLOCAST_LATENCY_MONOTONE (the servers fixture sets it) every candidate,
    the upstream configuration included, is constrained: more load never lowers a bound."""
    info = httpx.get(f"{servers['training']}/model/download/info", timeout=10).json()
    if not info["monotone"]:
        pytest.skip("servers under test run without SLOCAST_LATENCY_MONOTONE")
    assert all("free" not in label for labels in info["candidates"].values() for label in labels)
    base = {**FEATURES, "kv_cache_percentage": 0.8, "num_request_running": 100}
    for field, values in (
        ("input_token_length", [0, 100, 500, 1000, 2000, 4000, 8000, 16000]),
        ("num_request_waiting", [0, 1, 5, 10, 25, 50, 100, 200]),
        ("prefill_tokens_in_flight", [0, 100, 1000, 4000, 8000, 16000]),
        ("decode_tokens_in_flight", [0, 1000, 10000, 50000, 100000]),
    ):
        preds = strict(servers, sweep(base, field, values)).json()["predictions"]
        for target in ("ttft_ms", "tpot_ms"):
            series = [row[target] for row in preds]
            assert all(b >= a - 1e-9 for a, b in zip(series[:-1], series[1:], strict=True)), (
                field,
                target,
                series,
            )
    ttft = [
        r["ttft_ms"]
        for r in strict(servers, sweep(TYPICAL, "num_request_waiting", [0, 200])).json()[
            "predictions"
        ]
    ]
    # It grows with the law's main term (15 ms per waiting request), from a bound that
    # is not 0: a point below 0 is clipped at the point floor (before the floor such a
    # bound was 0 ms, which alone let a growth check pass). Checked inside the training
    # data's range: far outside it (1 waiting, 16k-token prompts) the fit may clip
    # both ends to the floor, and the check would test the fit, not the server.
    assert 0 < ttft[0] < ttft[1]


def test_all_endpoints_agree_and_use_every_feature(servers: dict[str, str], learned: dict) -> None:
    # Inside the training data's range: outside it, whether a tree splits on tokens
    # in flight depends on the fit, not on the server.
    items = [
        {**TYPICAL, "prefill_tokens_in_flight": 11000, "decode_tokens_in_flight": 90000},
        {**FEATURES, "pod_type": "decode", "encoder_input_size": 5},
    ]
    bulk_strict = strict(servers, items).json()
    bulk = httpx.post(f"{servers['prediction']}/predict/bulk", json={"requests": items}).json()
    singles = [httpx.post(f"{servers['prediction']}/predict", json=it).json() for it in items]
    assert bulk_strict["total_requests"] == 2 and bulk_strict["failed_predictions"] == 0
    assert bulk["errors"] == [] and bulk["successful_predictions"] == 2
    for a, b, c in zip(bulk_strict["predictions"], bulk["predictions"], singles, strict=True):
        assert set(a) >= PREDICTION_FIELDS and a["ttft_ms"] >= 0 and a["tpot_ms"] >= 0
        assert a["ttft_ms"] == b["ttft_ms"] == c["ttft_ms"]
        assert a["tpot_ms"] == b["tpot_ms"] == c["tpot_ms"]
    # Tokens in flight reach the model (the endpoints agree, so on every endpoint):
    # decode tokens in flight from the 1st to the 95th percentile add ~90 ms to the
    # TPOT law, far more than its noise: a model that sees them predicts higher.
    plain = strict(servers, [TYPICAL]).json()["predictions"][0]
    assert plain["tpot_ms"] < bulk_strict["predictions"][0]["tpot_ms"]


def test_bulk_rejects_the_whole_body_on_a_schema_error(
    servers: dict[str, str], learned: dict
) -> None:
    """As upstream: one invalid item is a 422 for the whole body, naming the item."""
    missing = {k: v for k, v in FEATURES.items() if k != "prefix_cache_score"}
    for bad in ({**FEATURES, "kv_cache_percentage": 3}, missing):
        r = httpx.post(
            f"{servers['prediction']}/predict/bulk", json={"requests": [FEATURES, bad, FEATURES]}
        )
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][:3] == ["body", "requests", 1]


def test_status_and_reload(servers: dict[str, str], learned: dict) -> None:
    status = httpx.get(f"{servers['prediction']}/status").json()
    assert status["is_ready"] and status["quantile"] == 0.9 and status["model_version"]
    # the trainer's models are always within what the forest kernel holds: on the
    # native engine (the default) nothing falls back to XGBoost
    assert status["engine"] in ("native", "xgboost")
    assert all(e.startswith(status["engine"]) for e in status["engines"].values()), status
    assert status["engine_fallbacks"] == 0
    assert httpx.get(f"{servers['prediction']}/readyz").json() == {"status": "ready"}
    reloaded = httpx.post(f"{servers['prediction']}/reload", headers=auth(servers))
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["is_ready"] is True
    assert reloaded.json()["reload"] in ("scheduled", "pending")  # runs off the request
    assert httpx.get(f"{servers['training']}/data/status").json()["model_ready"] is True


def test_retrains_on_new_data_not_a_stub(servers: dict[str, str], learned: dict) -> None:
    """After a flush and samples of another workload (2k-32k token prompts, far
    outside the first model's inputs), a retrained model serves calibrated bounds
    that follow the law there. A stub, a model that never retrains, or one that
    is only rescaled (ACI) fails: the old trees are flat beyond their inputs."""
    flushed_at = flush(servers)["flushed_at"]
    post_samples(servers, to_records(generate("long-prompts", 10_000, seed=22)))
    version = wait_for_new_model(servers, flushed_at)
    assert version != learned["version"]
    fresh = generate("long-prompts", 3000, seed=23)
    preds = strict(servers, to_records(fresh)).json()["predictions"]
    for target, column, law in (
        ("ttft_ms", "actual_ttft_ms", ttft_mean_ms(fresh)),
        ("tpot_ms", "actual_tpot_ms", tpot_mean_ms(fresh)),
    ):
        p = np.array([row[target] for row in preds])
        observed = fresh[column] > 0
        cover = float(np.mean(fresh[column][observed] <= p[observed]))
        assert 0.85 <= cover <= 0.95, (target, cover)
        ranks = np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(law)))[0, 1]
        assert ranks > 0.8, (target, ranks)
