"""The native request kernel answers exactly as the Python request path, or not at all.

Differential: every body goes to both. Where Python answers 200 the kernel must
return the very same bytes or decline (None); where Python refuses (a 4xx) the
kernel must decline. The common request shapes must be served natively (else the
kernel would silently be dead weight). Runs on the serving session's XGBoost
champion, loaded in-process exactly as a worker loads it.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from byte_mutations import mutated
from slocast.core.schema import FEATURE_COLUMNS
from slocast.serve.forecasting import batch_body, forecast_body
from slocast.serve.validation import InputError, parse_batch, parse_forecast


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    if server.home is None:
        pytest.skip("needs the serving test's own SLOCAST_HOME")
    from slocast.serve.loading import build_served_model, fetch_bundle
    from slocast.settings import ServeSettings

    registry = server.registry()
    ref = registry.champion(server.task)
    if ref.family != "xgboost":
        pytest.skip(f"the champion is {ref.family}: no native request kernel")
    home = tmp_path_factory.mktemp("native-home")
    settings = ServeSettings.from_env(
        {"SLOCAST_HOME": str(home), "MLFLOW_TRACKING_URI": server.tracking_uri}
    )
    bundle_dir = fetch_bundle(registry, ref, settings.models_dir)
    model = build_served_model(ref, bundle_dir, settings)
    assert model.native is not None, model.info.get("request_path")
    assert model.info["request_path"] == "native"
    return model


@pytest.fixture(scope="module")
def windows(served, server):
    """Real test windows of the champion's dataset (rows = history_rows + 3)."""
    from slocast.core.storage import LocalStore
    from slocast.preprocess.store import load_dataset

    data = load_dataset(LocalStore(server.home / "artifacts"), served.ref.dataset_id)
    rows = served.rules.history_rows + 3
    ends = data.ends("test")
    picks = ends[np.linspace(0, ends.size - 1, 40).astype(int)]
    picks = picks[picks >= rows]
    out = []
    for end in picks:
        values = np.nan_to_num(data.values[end - rows : end])
        out.append((data.times[end - rows : end], values))
    return out


def _rows(times, values, fmt=float) -> list[dict]:
    stamps = np.datetime_as_string(np.asarray(times, "datetime64[s]"), unit="s").tolist()
    return [
        {"time": t, **{c: fmt(v) for c, v in zip(FEATURE_COLUMNS, row, strict=True)}}
        for t, row in zip(stamps, np.asarray(values).tolist(), strict=True)
    ]


def _python(served, body: bytes, batch: bool) -> bytes | None:
    try:
        if batch:
            return batch_body(served, parse_batch(body, served.rules))[0]
        return forecast_body(served, parse_forecast(body, served.rules))[0]
    except InputError:
        return None


def agrees(served, body: bytes, batch: bool) -> bool:
    """Checks the contract on one body; True when the kernel served it."""
    expected = _python(served, body, batch)
    got = served.native.forecast(body, batch)
    if expected is None:
        assert got is None, f"kernel accepted what Python refuses: {body[:300]!r}"
        return False
    if got is not None:
        assert got[0] == expected, f"body {body[:300]!r}\nnative {got[0][:400]!r}"
    return got is not None


def test_plain_requests_are_served_natively_and_identically(served, windows) -> None:
    levels = [float(q) for q in served.rules.levels]
    for i, (times, values) in enumerate(windows):
        history = _rows(times, values)
        for extra in ({}, {"quantiles": levels}, {"quantiles": []}, {"quantiles": levels * 2}):
            for horizon in range(1, served.rules.max_horizon + 1):
                doc = {"history": history, "horizon": horizon, **extra}
                assert agrees(served, orjson.dumps(doc), False), doc
        series = [{"id": f"cell-{j}" if j % 2 else j, "history": history} for j in range(i % 5 + 1)]
        assert agrees(served, orjson.dumps({"series": series, "quantiles": levels[::-1]}), True)


def test_other_number_and_layout_forms(served, windows) -> None:
    """Renderings a client may send; each either served identically or declined."""
    times, values = windows[3]
    served_count = 0
    forms = [
        repr,
        "{:.17e}".format,
        "{:.20f}".format,
        "{:.3f}".format,
        lambda v: str(int(v)),
        lambda v: f"{v:.12E}",
        lambda v: repr(-v),
        lambda v: "0" if v == 0 else repr(v / 1e25),
        lambda v: repr(v * 1e-300),  # subnormal range: strtod
    ]
    for form in forms:
        rows = [
            "{"
            + f'"time": "{r["time"]}", '
            + ", ".join(f'"{c}": {form(r[c])}' for c in FEATURE_COLUMNS)
            + "}"
            for r in _rows(times, values)
        ]
        body = ('{"history": [' + ", ".join(rows) + "]}").encode()
        served_count += agrees(served, body, False)
    assert served_count >= 6
    doc = {"history": _rows(times, values)}
    pretty = json.dumps(doc, indent=2).encode()
    assert agrees(served, pretty, False)
    shuffled = {"history": [dict(reversed(list(r.items()))) for r in doc["history"]]}
    assert agrees(served, orjson.dumps(shuffled), False)
    late_keys = {"quantiles": [0.9], "history": doc["history"], "horizon": 1}
    assert agrees(served, orjson.dumps(late_keys), False)


@pytest.mark.parametrize(
    "stamp",
    [
        lambda t: t + "Z",
        lambda t: t + ".000",
        lambda t: t + ".5",
        lambda t: t + ".123456789",
        lambda t: t.replace("T", " "),
        lambda t: t + "+00:00",  # declined: Python decides
        lambda t: t + ".1234567891",
        lambda t: t[:10],
        lambda t: t.replace("-", "/"),
    ],
)
def test_timestamp_forms(served, windows, stamp) -> None:
    times, values = windows[5]
    history = _rows(times, values)
    for row in history:
        row["time"] = stamp(row["time"])
    agrees(served, orjson.dumps({"history": history}), False)


def test_irregular_spacing_within_tolerance(served, windows) -> None:
    times, values = windows[7]
    tolerance_s = served.rules.tolerance_ns // 10**9
    assert tolerance_s >= 2
    jitter = np.resize([0, 1, -1, 0], len(times)) * (tolerance_s // 2)
    history = _rows(np.asarray(times, "datetime64[s]") + jitter.astype("timedelta64[s]"), values)
    assert agrees(served, orjson.dumps({"history": history}), False)
    jitter[-2] += tolerance_s * 2  # now off the grid: Python names the row
    history = _rows(np.asarray(times, "datetime64[s]") + jitter.astype("timedelta64[s]"), values)
    assert not agrees(served, orjson.dumps({"history": history}), False)


def _bad_bodies(served, times, values) -> list[tuple[bytes, bool]]:
    good = _rows(times, values)
    one = {"history": good}
    bodies: list[tuple[dict | bytes, bool]] = [
        ({"history": good[: served.rules.history_rows - 1]}, False),
        ({"history": [{k: v for k, v in r.items() if k != "up"} for r in good]}, False),
        ({"history": [{**r, "extra": 1} for r in good]}, False),
        ({"history": [{**r, "down": None} for r in good]}, False),
        ({"history": [{**r, "down": "1.0"} for r in good]}, False),
        ({"history": [{**r, "down": True} for r in good]}, False),
        ({"history": good[::-1]}, False),
        ({"history": good[:4] + good[3:]}, False),
        ({"history": good[:4] + good[5:]}, False),
        ({**one, "quantiles": [0.42]}, False),
        ({**one, "quantiles": "0.9"}, False),
        ({**one, "horizon": 0}, False),
        ({**one, "horizon": served.rules.max_horizon + 1}, False),
        ({**one, "horizon": 1.0}, False),
        ({**one, "horizon": True}, False),
        ({**one, "other": 1}, False),
        ({"series": [{"id": "a", "history": good}]}, False),
        ({"history": good[0]}, False),
        ({"history": []}, False),
        ({"series": [{"id": "a", "history": good}, {"id": "a", "history": good}]}, True),
        ({"series": [{"id": 1, "history": good}, {"id": 1, "history": good}]}, True),
        ({"series": [{"id": 1.5, "history": good}]}, True),
        ({"series": [{"id": None, "history": good}]}, True),
        ({"series": [{"id": "a", "history": good, "x": 1}]}, True),
        ({"series": [{"history": good}]}, True),
        ({"series": []}, True),
        ({"series": [{"id": str(i), "history": good} for i in range(1001)]}, True),
        ({"history": good}, True),
        (
            b'{"history": [%s]}'
            % b",".join(orjson.dumps(r) for r in good).replace(b"1", b"NaN", 1),
            False,
        ),
        (orjson.dumps(one)[:-1], False),
        (orjson.dumps(one) + b" x", False),
        (orjson.dumps(one).replace(b'"history"', b'"history": [], "history"', 1), False),
        (orjson.dumps(one).replace(b'"down":', b'"down":1,"down":', 1), False),
        (orjson.dumps(one).replace(b'"time":"', b'"time":"\\u0032', 1), False),
        (b"", False),
        (b"[]", False),
    ]
    return [(b if isinstance(b, bytes) else orjson.dumps(b), batch) for b, batch in bodies]


def test_invalid_bodies_are_left_to_python(served, windows) -> None:
    times, values = windows[0]
    for body, batch in _bad_bodies(served, times, values):
        agrees(served, body, batch)


def test_extreme_values_are_left_to_python(served, windows) -> None:
    times, values = windows[1]
    for value in (1e308, -1e308, 1e300, -1e300, 1e-320):
        history = _rows(times, np.full_like(values, value))
        agrees(served, orjson.dumps({"history": history}), False)
    # The conformal scale overflows here: a 422 naming the history, not a 500.
    body = orjson.dumps({"history": _rows(times, np.full_like(values, -1e308))})
    with pytest.raises(InputError, match="not a finite number") as refused:
        forecast_body(served, parse_forecast(body, served.rules))
    assert refused.value.field == "history" and refused.value.status == 422


def test_duplicate_quantiles_and_ids_with_escapes(served, windows) -> None:
    times, values = windows[2]
    history = _rows(times, values)
    levels = [float(q) for q in served.rules.levels]
    doc = {"series": [{"id": 'quote"d', "history": history}, {"id": -7, "history": history}]}
    assert not agrees(served, orjson.dumps({**doc, "quantiles": levels}), True)  # escapes
    doc = {"series": [{"id": "x/y~", "history": history}, {"id": -7, "history": history}]}
    assert agrees(served, orjson.dumps({**doc, "quantiles": levels + levels[:1]}), True)


def test_random_mutations(served, windows) -> None:
    """Never accept what Python refuses; identical bytes whenever both answer."""
    rng = np.random.default_rng(11)
    times, values = windows[4]
    history = _rows(times, values)
    seeds = [
        orjson.dumps({"history": history, "quantiles": [0.9]}),
        orjson.dumps({"series": [{"id": 1, "history": history}, {"id": "b", "history": history}]}),
    ]
    alphabet = b'{}[],:"0123456789.-+eE \nTZtfalsenul_x'
    accepted = 0
    for _ in range(1500):
        batch = bool(rng.integers(2))
        accepted += agrees(served, mutated(seeds[int(batch)], rng, alphabet, 2), batch)
    assert accepted > 100
