"""The HTTP contract of the prediction server, black box."""

from __future__ import annotations

import copy

import orjson
import pytest

from slocast.core.schema import FEATURE_COLUMNS, TARGET_COLUMNS


def test_health_and_readiness(server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"


def test_model_endpoint(model_info: dict) -> None:
    for key in ("name", "version", "family", "engine", "test_metrics", "loaded_at"):
        assert key in model_info
    assert model_info["columns"] == list(FEATURE_COLUMNS)
    assert model_info["targets"] == list(TARGET_COLUMNS)
    assert "0.9" in model_info["calibration"]["levels"]
    assert model_info["history_rows"] >= 1 and model_info["max_horizon"] >= 1


def test_forecast_contract(server, model_info, synthetic_history) -> None:
    levels = [float(q) for q in model_info["calibration"]["levels"]]
    with server.client() as client:
        response = client.post(
            "/v1/forecast", json={"history": synthetic_history, "horizon": 1, "quantiles": levels}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model"] == {
        "name": model_info["name"],
        "version": model_info["version"],
        "family": model_info["family"],
    }
    [step] = body["forecasts"]
    # The next step on the history's 2-minute grid.
    assert step["time"] > synthetic_history[-1]["time"]
    assert set(step["point"]) == set(TARGET_COLUMNS)
    assert list(step["quantiles"]) == model_info["calibration"]["levels"]
    ordered = sorted(levels)
    for target in TARGET_COLUMNS:
        bounds = [step["quantiles"][f"{q:g}"][target] for q in ordered]
        assert bounds == sorted(bounds), "upper bounds must grow with the level"


def test_forecast_time_continues_grid(server, model_info, synthetic_history) -> None:
    import numpy as np

    with server.client() as client:
        body = client.post("/v1/forecast", json={"history": synthetic_history}).json()
    last = np.datetime64(synthetic_history[-1]["time"])
    step = np.timedelta64(int(model_info["step_seconds"]), "s")
    assert np.datetime64(body["forecasts"][0]["time"]) == last + step
    assert list(body["forecasts"][0]["quantiles"]) == ["0.9"]  # the default level


@pytest.mark.parametrize("route", ["/v1/forecast", "/v1/forecast/batch"])
def test_forecast_times_past_2262_are_refused_not_wrapped(
    server, model_info, synthetic_history, route
) -> None:
    """The latest datetime64[ns] is 2262-04-11T23:47:16: later forecasts would wrap to 1677."""
    import numpy as np

    horizon = model_info["max_horizon"]
    step = np.timedelta64(int(model_info["step_seconds"]), "s")
    end = np.datetime64("2262-04-11T23:47:16", "s") - step * (horizon - 1)
    history = copy.deepcopy(synthetic_history)
    for k, row in enumerate(reversed(history)):
        row["time"] = str(end - step * k)
    body = {"history": history, "horizon": horizon}
    if route.endswith("batch"):
        body = {"series": [{"id": "a", "history": history}], "horizon": horizon}
    with server.client() as client:
        response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    assert "2262-04-11" in response.json()["detail"]
    # One step earlier fits: the last forecast lands on the last representable second.
    for row in history:
        row["time"] = str(np.datetime64(row["time"]) - step)
    with server.client() as client:
        response = client.post(route, json=body)
    assert response.status_code == 200, response.text
    assert response.text.count("2262-04-11T23:4") >= 1 and "1677" not in response.text


def _shift_years(history: list[dict], year: str) -> list[dict]:
    rows = copy.deepcopy(history)
    for row in rows:
        row["time"] = year + row["time"][4:]
    return rows


@pytest.mark.parametrize("route", ["/v1/forecast", "/v1/forecast/batch"])
@pytest.mark.parametrize("year", ["9999", "2263", "1677", "0018"])
def test_times_beyond_datetime64_ns_are_refused_not_wrapped(
    server, synthetic_history, route, year
) -> None:
    """numpy wraps such a time silently (year 9999 became 1815), on the grid. The
    history is in February: of 1677 only times from September on are held."""
    history = _shift_years(synthetic_history, year)
    body: dict = {"history": history}
    field = "history[0].time"
    if route.endswith("batch"):
        body = {"series": [{"id": "a", "history": synthetic_history}, {"id": "b", **body}]}
        field = "series[1].history[0].time"
    with server.client() as client:
        response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field and "outside the times" in error["detail"], error
    assert "1677-09-21" in error["detail"] and "2262-04-11" in error["detail"]


@pytest.mark.parametrize("route", ["/v1/forecast", "/v1/forecast/batch"])
@pytest.mark.parametrize("stamp", ["1517874000", "2018", "now", "+12018-02-05T00:00:00"])
def test_times_that_are_not_iso_8601_are_refused(server, synthetic_history, route, stamp) -> None:
    """numpy reads bare digits as a year: epoch seconds were reported as a duplicate time."""
    history = _mutate_row(synthetic_history, 3, time=stamp)
    body: dict = {"history": history}
    field = "history[3].time"
    if route.endswith("batch"):
        body = {"series": [{"id": 7, **body}]}
        field = "series[0].history[3].time"
    with server.client() as client:
        response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field, error
    assert error["detail"].startswith(f"cannot parse {stamp!r} as an ISO-8601 timestamp")


def test_older_rows_are_ignored(server, model_info, synthetic_history) -> None:
    rows = model_info["history_rows"]
    with server.client() as client:
        full = client.post("/v1/forecast", json={"history": synthetic_history}).json()
        trimmed = client.post("/v1/forecast", json={"history": synthetic_history[-rows:]}).json()
    assert full["forecasts"] == trimmed["forecasts"]


def test_batch_matches_single(server, model_info, synthetic_history) -> None:
    rows = model_info["history_rows"]
    histories = [synthetic_history[i : i + rows] for i in range(len(synthetic_history) - rows + 1)]
    series = [{"id": f"cell-{i}", "history": h} for i, h in enumerate(histories)]
    series.append({"id": 99, "history": synthetic_history})
    with server.client() as client:
        batch = client.post("/v1/forecast/batch", json={"series": series})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["id"] for r in results] == [s["id"] for s in series]
        for item, result in zip(series, results, strict=True):
            single = client.post("/v1/forecast", json={"history": item["history"]}).json()
            assert single["forecasts"] == result["forecasts"]


def _mutate_row(history: list[dict], index: int, **changes) -> list[dict]:
    rows = copy.deepcopy(history)
    for key, value in changes.items():
        if value is _DELETE:
            del rows[index][key]
        else:
            rows[index][key] = value
    return rows


_DELETE = object()


DEEP = b"[" * 100_000 + b"]" * 100_000


def _bad_cases(history: list[dict], info: dict) -> list[tuple[str, dict | bytes, int, str]]:
    """(case id, body, expected status, field the message must name)."""
    n_min = info["history_rows"]
    max_h = info["max_horizon"]
    swapped = copy.deepcopy(history)
    swapped[2]["time"], swapped[3]["time"] = swapped[3]["time"], swapped[2]["time"]
    duplicate = copy.deepcopy(history)
    duplicate[4]["time"] = duplicate[3]["time"]
    gap = copy.deepcopy(history[:3]) + copy.deepcopy(history[4:])
    return [
        ("invalid-json", b"{not json", 400, "body"),
        ("not-an-object", b"[1, 2]", 422, "body"),
        ("missing-history", {"horizon": 1}, 422, "history"),
        ("unknown-top-field", {"history": history, "foo": 1}, 422, "foo"),
        ("history-not-list", {"history": {"a": 1}}, 422, "history"),
        ("too-few-rows", {"history": history[: n_min - 1]}, 422, "history"),
        ("empty-history", {"history": []}, 422, "history"),
        ("row-not-object", {"history": [1] * len(history)}, 422, "history[0]"),
        ("missing-column", {"history": _mutate_row(history, 2, up=_DELETE)}, 422, "history[2]"),
        ("missing-time", {"history": _mutate_row(history, 1, time=_DELETE)}, 422, "history[1]"),
        ("extra-column", {"history": _mutate_row(history, 3, cpu=1.0)}, 422, "history[3]"),
        (
            "non-numeric",
            {"history": _mutate_row(history, 4, down="12")},
            422,
            "history[4].down",
        ),
        ("boolean", {"history": _mutate_row(history, 4, up=True)}, 422, "history[4].up"),
        (
            "negative-volume",
            {"history": _mutate_row(history, len(history) - 1, down=-5.0)},
            422,
            f"history[{len(history) - 1}].down",
        ),
        ("null-nan", {"history": _mutate_row(history, 5, mcs_up=None)}, 422, "history[5].mcs_up"),
        ("nan-literal", b'{"history": [{"down": NaN}]}', 400, "body"),
        ("infinite-literal", b'{"history": [{"down": 1e999}]}', 400, "body"),
        ("huge-integer", b'{"history": [{"down": 1' + b"0" * 400 + b"}]}", 400, "body"),
        # 100,000 levels (the latency servers once gave a 500): refused at the first
        # level that is not what the schema expects, never recursed into
        ("deeply-nested", DEEP, 422, "body"),
        ("deeply-nested-unknown-field", b'{"history": [], "x": ' + DEEP + b"}", 422, "x"),
        (
            "bad-time",
            {"history": _mutate_row(history, 2, time="yesterday")},
            422,
            "history[2].time",
        ),
        ("numeric-time", {"history": _mutate_row(history, 2, time=12345)}, 422, "history[2].time"),
        ("unsorted", {"history": swapped}, 422, "history[3].time"),
        ("duplicate-time", {"history": duplicate}, 422, "history[4].time"),
        ("irregular", {"history": gap}, 422, "history[3].time"),
        ("horizon-too-far", {"history": history, "horizon": max_h + 1}, 422, "horizon"),
        ("horizon-zero", {"history": history, "horizon": 0}, 422, "horizon"),
        ("horizon-string", {"history": history, "horizon": "1"}, 422, "horizon"),
        ("unknown-quantile", {"history": history, "quantiles": [0.8]}, 422, "quantiles[0]"),
        ("quantile-string", {"history": history, "quantiles": ["0.9"]}, 422, "quantiles[0]"),
        ("quantiles-not-list", {"history": history, "quantiles": 0.9}, 422, "quantiles"),
    ]


def test_bad_inputs_name_the_field(server, model_info, synthetic_history) -> None:
    cases = _bad_cases(synthetic_history, model_info)
    failures = []
    with server.client() as client:
        for case_id, body, status, field in cases:
            content = body if isinstance(body, bytes) else orjson.dumps(body)
            response = client.post(
                "/v1/forecast", content=content, headers={"content-type": "application/json"}
            )
            error = response.json() if response.status_code < 500 else {}
            if response.status_code != status or error.get("field") != field:
                failures.append((case_id, response.status_code, response.text[:200]))
            elif not error.get("detail"):
                failures.append((case_id, "empty detail", response.text[:200]))
    assert not failures, failures


def test_an_idle_cell_gets_no_negative_bound(server, model_info, synthetic_history) -> None:
    """Every target 0 for the whole window (an idle cell): low levels' offsets are
    negative, yet no bound goes below the targets' floor (0 here), as no point does."""
    idle = copy.deepcopy(synthetic_history)
    for row in idle:
        row.update({name: 0.0 for name in TARGET_COLUMNS})
    levels = [float(q) for q in model_info["calibration"]["levels"]]
    with server.client() as client:
        response = client.post("/v1/forecast", json={"history": idle, "quantiles": levels})
    assert response.status_code == 200, response.text
    for step in response.json()["forecasts"]:
        assert min(step["point"].values()) >= 0.0
        for bounds in step["quantiles"].values():
            assert min(bounds.values()) >= 0.0, step


def test_bodies_of_another_media_type_are_415(server, synthetic_history) -> None:
    body = orjson.dumps({"history": synthetic_history})
    with server.client() as client:
        for path in ("/v1/forecast", "/v1/reload"):
            r = client.post(
                path, content=body, headers={"content-type": "text/plain", **server.auth()}
            )
            assert r.status_code == 415, r.text
            assert r.json()["field"] == "content-type" and "text/plain" in r.json()["detail"]
        ok = client.post(
            "/v1/forecast",
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
        )
    assert ok.status_code == 200, ok.text


def test_unknown_quantile_lists_available(server, model_info, synthetic_history) -> None:
    with server.client() as client:
        error = client.post(
            "/v1/forecast", json={"history": synthetic_history, "quantiles": [0.9, 0.42]}
        ).json()
    assert error["field"] == "quantiles[1]"
    for level in model_info["calibration"]["levels"]:
        assert level in error["detail"]


def test_horizon_error_names_the_max(server, model_info, synthetic_history) -> None:
    with server.client() as client:
        error = client.post(
            "/v1/forecast", json={"history": synthetic_history, "horizon": 50}
        ).json()
    assert f"1 to {model_info['max_horizon']}" in error["detail"]


def test_body_over_limit_is_413(server) -> None:
    big = b'{"history": [' + b" " * (9 * 1024 * 1024) + b"]}"
    with server.client() as client:
        response = client.post(
            "/v1/forecast", content=big, headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["field"] == "body"


def test_history_over_row_limit_is_413(server, synthetic_history) -> None:
    rows = synthetic_history * (6000 // len(synthetic_history) + 1)
    with server.client() as client:
        response = client.post("/v1/forecast", json={"history": rows})
    assert response.status_code == 413
    assert response.json()["field"] == "history"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"series": []}, 422, "series"),
        ({"series": {}}, 422, "series"),
        ({"series": [{"id": "a"}]}, 422, "series[0]"),
        ({"series": [{"id": None, "history": []}]}, 422, "series[0].id"),
        ({"series": [{"id": 1.5, "history": []}]}, 422, "series[0].id"),
        ({"history": []}, 422, "history"),
        (DEEP, 422, "body"),
        (b'{"series": [{"id": "a", "history": ' + DEEP + b"}]}", 422, "series[0].history[0]"),
    ],
)
def test_bad_batches(server, body, status, field) -> None:
    with server.client() as client:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            response = client.post("/v1/forecast/batch", content=body, headers=headers)
        else:
            response = client.post("/v1/forecast/batch", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


def test_batch_errors_name_the_series(server, synthetic_history) -> None:
    series = [
        {"id": "ok", "history": synthetic_history},
        {"id": "bad", "history": _mutate_row(synthetic_history, 2, up="x")},
    ]
    duplicate = [{"id": "a", "history": synthetic_history}] * 2
    with server.client() as client:
        bad = client.post("/v1/forecast/batch", json={"series": series}).json()
        dup = client.post("/v1/forecast/batch", json={"series": duplicate}).json()
    assert bad["field"] == "series[1].history[2].up"
    assert dup["field"] == "series[1].id"


@pytest.mark.parametrize("sid", [2**64, 10**30, -(2**63) - 1])
def test_batch_integer_ids_beyond_64_bits_are_422(server, synthetic_history, sid) -> None:
    """orjson cannot write them back (the response raised a 500)."""
    edges = [{"id": -(2**63), "history": synthetic_history}]
    edges.append({"id": 2**64 - 1, "history": synthetic_history})
    with server.client() as client:
        response = client.post(
            "/v1/forecast/batch", json={"series": [*edges, {"id": sid, "history": []}]}
        )
        ok = client.post("/v1/forecast/batch", json={"series": edges})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == "series[2].id" and "64-bit range" in error["detail"], error
    assert ok.status_code == 200, ok.text
    assert [r["id"] for r in ok.json()["results"]] == [-(2**63), 2**64 - 1]


def test_batch_over_limit(server, synthetic_history) -> None:
    series = [{"id": i, "history": synthetic_history[-10:]} for i in range(1001)]
    with server.client() as client:
        response = client.post("/v1/forecast/batch", json={"series": series})
    assert response.status_code == 413
    assert response.json()["field"] == "series"


def test_reload_requires_token(server) -> None:
    if not server.admin_token:
        pytest.skip("the server under test has no SLOCAST_ADMIN_TOKEN")
    with server.client() as client:
        assert client.post("/v1/reload").status_code == 401
        wrong = client.post("/v1/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.post("/v1/reload", headers=server.auth())
        # the scheme is case-insensitive (RFC 9110), as on the latency servers
        lower = client.post("/v1/reload", headers={"Authorization": f"bearer {server.admin_token}"})
    assert ok.status_code == 200
    assert ok.json()["outcome"] in ("unchanged", "swapped")
    assert lower.status_code == 200, lower.text


def test_metrics_exposition(server, synthetic_history) -> None:
    with server.client() as client:
        client.post("/v1/forecast", json={"history": synthetic_history})
        text = client.get("/metrics").text
    for name in (
        "slocast_http_requests_total",
        "slocast_http_request_duration_seconds_bucket",
        "slocast_predictions_total",
        "slocast_model_info",
        "slocast_model_reloads_total",
        "slocast_model_load_failures_total",
    ):
        assert name in text, name
    assert "# HELP slocast_http_request_duration_seconds" in text
    assert "# TYPE slocast_http_request_duration_seconds histogram" in text
    assert 'route="/v1/forecast"' in text


def test_unknown_routes_are_4xx(server) -> None:
    with server.client() as client:
        assert client.get("/nope").status_code == 404
        assert client.get("/v1/forecast").status_code == 405
