"""parse_batch's one-pass path returns what the per-series path returns, errors included."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest

from slocast.core.schema import FEATURE_COLUMNS
from slocast.serve import validation
from slocast.serve.bodies import BATCH
from slocast.serve.validation import InputError, RequestRules, parse_batch

STEP_NS = 120 * 10**9
RULES = RequestRules(
    history_rows=10,
    max_history_rows=50,
    max_batch_series=100,
    step_ns=STEP_NS,
    tolerance_ns=STEP_NS // 10,
    max_horizon=1,
    levels={0.9: "0.9"},
    default_quantiles=(0.9,),
    value_floor=np.full(len(FEATURE_COLUMNS), -np.inf),
)


def _history(rng, n, start):
    t0 = np.datetime64("2024-03-31T00:00:00") + np.timedelta64(start * 120, "s")
    return [
        {
            "time": str(t0 + np.timedelta64(120 * i, "s")),
            **{c: float(rng.random() * 100) for c in FEATURE_COLUMNS},
        }
        for i in range(n)
    ]


def _doc(n_series=7, n_rows=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "series": [
            {"id": f"cell-{i}" if i % 2 else i, "history": _history(rng, n_rows, 37 * i)}
            for i in range(n_series)
        ]
    }


def _slow(body):
    original = validation._batch_fast
    validation._batch_fast = lambda series, rules: None
    try:
        return parse_batch(body, RULES)
    finally:
        validation._batch_fast = original


def _outcome(fn, body):
    try:
        req = fn(body, RULES) if fn is parse_batch else fn(body)
    except InputError as exc:
        return ("error", exc.field, exc.message, exc.status)
    return ("ok", req)


@pytest.mark.parametrize("n_series,n_rows", [(1, 10), (7, 12), (100, 10), (3, 50)])
def test_valid_batches_parse_identically(n_series, n_rows):
    body = orjson.dumps(_doc(n_series, n_rows))
    fast, slow = parse_batch(body, RULES), _slow(body)
    assert validation._batch_fast(BATCH.decode(body).series, RULES) is not None
    np.testing.assert_array_equal(fast.times, slow.times)
    np.testing.assert_array_equal(fast.values, slow.values)
    assert fast.times.dtype == slow.times.dtype and fast.values.dtype == slow.values.dtype
    assert fast.values.flags.c_contiguous and fast.times.flags.c_contiguous
    assert fast.ids == slow.ids
    assert (fast.horizon, fast.quantiles) == (slow.horizon, slow.quantiles)


def _corrupt(kind):
    doc = _doc()
    series = doc["series"]
    if kind == "duplicate_id":
        series[4]["id"] = series[2]["id"]
    elif kind == "bool_id":
        series[3]["id"] = True
    elif kind == "extra_series_key":
        series[1]["note"] = 1
    elif kind == "short_history":
        series[5]["history"] = series[5]["history"][:9]
    elif kind == "ragged_lengths":  # valid, but not one shape: the per-series path
        series[5]["history"] = series[5]["history"][:10]
    elif kind == "null_cell":
        series[2]["history"][3]["up"] = None
    elif kind == "string_cell":
        series[6]["history"][0]["down"] = "1"
    elif kind == "missing_column":
        del series[1]["history"][4]["rb_up"]
    elif kind == "row_not_object":
        series[1]["history"][4] = [1, 2]
    elif kind == "bad_time":
        series[3]["history"][2]["time"] = "yesterday"
    elif kind == "numeric_time":
        series[3]["history"][2]["time"] = 5
    elif kind == "gap":
        series[4]["history"] = series[4]["history"][:5] + series[4]["history"][6:]
    elif kind == "unsorted":
        h = series[2]["history"]
        h[3], h[4] = h[4], h[3]
    elif kind == "duplicate_time":
        series[2]["history"][4]["time"] = series[2]["history"][3]["time"]
    elif kind == "series_not_object":
        series[3] = "x"
    elif kind == "two_problems":  # the first one must be reported
        series[1]["history"][2]["up"] = None
        series[4]["id"] = series[0]["id"]
    return copy.deepcopy(doc)


@pytest.mark.parametrize(
    "kind",
    [
        "duplicate_id",
        "bool_id",
        "extra_series_key",
        "short_history",
        "ragged_lengths",
        "null_cell",
        "string_cell",
        "missing_column",
        "row_not_object",
        "bad_time",
        "numeric_time",
        "gap",
        "unsorted",
        "duplicate_time",
        "series_not_object",
        "two_problems",
    ],
)
def test_problems_are_reported_as_before(kind):
    body = orjson.dumps(_corrupt(kind))
    fast, slow = _outcome(parse_batch, body), _outcome(_slow, body)
    if slow[0] == "error":
        assert fast == slow
    else:
        np.testing.assert_array_equal(fast[1].values, slow[1].values)
        np.testing.assert_array_equal(fast[1].times, slow[1].times)
        assert fast[1].ids == slow[1].ids
    if kind != "ragged_lengths":
        assert slow[0] == "error"
