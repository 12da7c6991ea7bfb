"""Unit tests: the request schema (msgspec Structs, FastAPI-shaped 422s) and the
shared feature builder."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from slocast.latency.features import FEATURE_NAMES, build_features, monotone_constraints, regimes
from slocast.latency.schema import (
    DUPLICATE_SCAN_BYTES,
    MAX_ITEMS,
    ValidationFailure,
    decode_bulk,
    decode_flush,
    decode_request,
    decode_samples,
    parse_features,
    parse_samples,
)

BASE = {
    "kv_cache_percentage": 0.5,
    "input_token_length": 100,
    "num_request_waiting": 2,
    "num_request_running": 4,
    "num_tokens_generated": 0,
    "prefix_cache_score": 0.25,
}


def one(**overrides) -> dict:
    return {**BASE, **overrides}


def test_defaults_and_unknown_fields() -> None:
    cols = parse_features([one(unknown="ignored")])
    assert cols["prefill_tokens_in_flight"][0] == 0
    assert cols["decode_tokens_in_flight"][0] == 0
    assert cols["encoder_input_size"][0] == 0
    assert cols["pod_type"][0] == 0


@pytest.mark.parametrize(
    ("item", "field", "kind"),
    [
        (
            {k: v for k, v in BASE.items() if k != "kv_cache_percentage"},
            "kv_cache_percentage",
            "missing",
        ),
        (one(kv_cache_percentage=1.5), "kv_cache_percentage", "less_than_equal"),
        (one(prefix_cache_score=-0.1), "prefix_cache_score", "greater_than_equal"),
        (one(input_token_length=-1), "input_token_length", "greater_than_equal"),
        (one(input_token_length=1.5), "input_token_length", "int_from_float"),
        (one(input_token_length="100"), "input_token_length", "int_type"),
        (one(num_request_waiting=None), "num_request_waiting", "int_type"),
        (one(kv_cache_percentage="x"), "kv_cache_percentage", "float_type"),
        (one(pod_type="gpu"), "pod_type", "literal_error"),
        (one(pod_type=["decode"]), "pod_type", "literal_error"),
        (one(decode_tokens_in_flight=-5), "decode_tokens_in_flight", "greater_than_equal"),
        # finite bounds: a 1e308 once passed and then broke every retrain
        (one(input_token_length=1e308), "input_token_length", "less_than_equal"),
        (one(num_request_waiting=10**6 + 1), "num_request_waiting", "less_than_equal"),
        (one(decode_tokens_in_flight=10**9 + 1), "decode_tokens_in_flight", "less_than_equal"),
        (one(encoder_input_size=2 * 10**7), "encoder_input_size", "less_than_equal"),
        (one(prefix_cache_score=float("inf")), "prefix_cache_score", "less_than_equal"),
        (one(kv_cache_percentage=float("nan")), "kv_cache_percentage", "less_than_equal"),
    ],
)
def test_invalid_item_names_index_and_field(item: dict, field: str, kind: str) -> None:
    with pytest.raises(ValidationFailure) as err:
        parse_features([one(), one(), item], ("requests",))
    detail = err.value.errors[0]
    assert detail["loc"] == ["body", "requests", 2, field]
    assert detail["type"] == kind


def test_non_object_item_and_list_bounds() -> None:
    with pytest.raises(ValidationFailure) as err:
        parse_features([one(), 5], ("requests",))
    assert err.value.errors[0]["loc"] == ["body", "requests", 1]
    assert err.value.errors[0]["type"] == "dict_type"
    for body, kind in (
        ({"requests": []}, "too_short"),
        ({"requests": [one()] * (MAX_ITEMS + 1)}, "too_long"),
        ({"other": [one()]}, "missing"),
        ({"requests": "x"}, "list_type"),
        ([one()], "dict_type"),
    ):
        with pytest.raises(ValidationFailure) as err:
            decode_bulk(msgspec.json.encode(body))
        assert err.value.errors[0]["type"] == kind, body
        assert err.value.errors[0]["loc"][:2] == (
            ["body", "requests"] if isinstance(body, dict) else ["body"]
        )


@pytest.mark.parametrize(
    ("item", "field", "kind"),
    [
        (one(kv_cache_percentage=1.5), "kv_cache_percentage", "less_than_equal"),
        (one(input_token_length=1.5), "input_token_length", "int_from_float"),
        (one(input_token_length="100"), "input_token_length", "int_type"),
        (one(num_request_waiting=True), "num_request_waiting", "int_type"),
        (one(prefix_cache_score=False), "prefix_cache_score", "float_type"),
        (one(pod_type="gpu"), "pod_type", "literal_error"),
        (one(input_token_length=1e308), "input_token_length", "less_than_equal"),
        (one(decode_tokens_in_flight=-5), "decode_tokens_in_flight", "greater_than_equal"),
    ],
)
def test_bodies_give_the_same_422_as_decoded_items(item: dict, field: str, kind: str) -> None:
    """The HTTP path (bytes decoded by msgspec) names the item, field and value."""
    with pytest.raises(ValidationFailure) as err:
        decode_bulk(msgspec.json.encode({"requests": [one(), item]}))
    detail = err.value.errors[0]
    assert detail["loc"] == ["body", "requests", 1, field]
    assert detail["type"] == kind
    if kind != "missing":
        assert detail["input"] == item[field]
    with pytest.raises(ValidationFailure) as single:
        decode_request(msgspec.json.encode(item))
    assert single.value.errors[0]["loc"] == ["body", field]


def test_body_level_errors() -> None:
    for body in (b"{not json", b'{"requests": [', b'{"requests"'):
        with pytest.raises(ValidationFailure) as err:
            decode_bulk(body)
        assert err.value.errors[0]["type"] == "json_invalid"
        assert "JSON decode error" in err.value.errors[0]["msg"]
    with pytest.raises(ValidationFailure) as err:
        decode_request(b"  ")
    assert err.value.errors[0]["type"] == "missing"
    with pytest.raises(ValidationFailure) as err:
        decode_samples(msgspec.json.encode({"entries": [one(actual_ttft_ms=1.0)]}))
    assert err.value.errors[0]["loc"] == ["body", "entries", 0, "actual_tpot_ms"]


def test_bodies_decode_to_the_columns_of_the_items() -> None:
    items = [one(pod_type="decode", decode_tokens_in_flight=7.0, extra={"ignored": [1]}), one()]
    body = msgspec.json.encode({"requests": items, "other": None})
    got, want = decode_bulk(body), parse_features(items)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
        assert got[name].dtype == np.float64 and got[name].flags.c_contiguous
    assert got["pod_type"].tolist() == [2, 0] and got["decode_tokens_in_flight"][0] == 7


def test_a_null_pod_type_is_monolithic_everywhere() -> None:
    """Upstream declares `pod_type: str | None` and takes null as "": so do requests,
    bulk items, samples and trace rows; an unknown name stays a 422."""
    nulls = [one(pod_type=None), one(pod_type=None, actual_ttft_ms=5.0, actual_tpot_ms=0.0)]
    assert decode_request(msgspec.json.encode(nulls[0]))["pod_type"].tolist() == [0]
    assert decode_bulk(msgspec.json.encode({"requests": nulls[:1] * 2}))["pod_type"].tolist() == [
        0,
        0,
    ]
    assert decode_samples(msgspec.json.encode({"entries": nulls[1:]}))["pod_type"].tolist() == [0]
    assert parse_samples(nulls[1:])["pod_type"].tolist() == [0]
    with pytest.raises(ValidationFailure) as err:
        decode_request(msgspec.json.encode(one(pod_type="monolithic")))
    assert err.value.errors[0]["type"] == "literal_error"


def test_flush_bodies() -> None:
    assert decode_flush(b"") == decode_flush(b"{}")
    assert decode_flush(b"{}").flush_training_data is True
    options = decode_flush(b'{"flush_metrics": false, "reason": "x"}')
    assert options.flush_metrics is False and options.reason == "x"
    for body, kind in (
        (b'{"flush_test_data": "no"}', "bool_type"),
        (b'{"reason": 5}', "string_type"),
    ):
        with pytest.raises(ValidationFailure) as err:
            decode_flush(body)
        assert err.value.errors[0]["type"] == kind


def test_whole_floats_accepted_for_integers() -> None:
    assert parse_features([one(input_token_length=100.0)])["input_token_length"][0] == 100


def test_error_echoes_a_bounded_input() -> None:
    for bad, echoed in (("x" * 1_000_000, "x" * 200 + "... (1000000 characters)"), ("xy", "xy")):
        with pytest.raises(ValidationFailure) as err:
            parse_features([one(pod_type=bad)], ("requests",))
        assert err.value.errors[0]["input"] == echoed
    with pytest.raises(ValidationFailure) as err:
        parse_features([one(input_token_length=list(range(1000)))], ("requests",))
    assert err.value.errors[0]["input"] == "<list of 1000 items, 3891 bytes>"


def test_an_error_is_reported_from_its_own_path_only() -> None:
    """The 422 of a body finds the offending value without decoding the rest: junk
    beside it (here a number no float holds, which decoding the whole body fails on,
    and a member of a million arrays) does not hide the value or cost a full decode."""
    junk = b'"x":[1e999,' + b",".join([b"[]"] * 1_000_000) + b"]"
    item = msgspec.json.encode(one(kv_cache_percentage=2))
    with pytest.raises(ValidationFailure) as err:
        decode_bulk(
            b"{" + junk + b',"requests":[' + msgspec.json.encode(BASE) + b"," + item + b"]}"
        )
    detail = err.value.errors[0]
    assert detail["loc"] == ["body", "requests", 1, "kv_cache_percentage"]
    assert detail["input"] == 2
    big = b'{"requests":{"a":"' + b"y" * 1000 + b'"}}'
    with pytest.raises(ValidationFailure) as err:
        decode_bulk(big)
    assert err.value.errors[0]["input"] == "<object of 1 items, 1008 bytes>"
    too_many = b'{"requests":[' + b",".join([msgspec.json.encode(BASE)] * (MAX_ITEMS + 1)) + b"]}"
    with pytest.raises(ValidationFailure) as err:
        decode_bulk(too_many)
    assert err.value.errors[0]["msg"].endswith(f"not {MAX_ITEMS + 1}")


def test_samples_require_targets() -> None:
    with pytest.raises(ValidationFailure) as err:
        parse_samples([one(actual_ttft_ms=5.0)], ("entries",))
    assert err.value.errors[0]["loc"][-1] == "actual_tpot_ms"


@pytest.mark.parametrize("field", ["actual_ttft_ms", "actual_tpot_ms", "input_token_length"])
def test_sample_ranges_name_the_field_and_the_range(field: str) -> None:
    sample = one(actual_ttft_ms=100.0, actual_tpot_ms=10.0)
    parse_samples([sample, {**sample, field: 1e7}])  # the bound itself is accepted
    with pytest.raises(ValidationFailure) as err:
        parse_samples([sample, {**sample, field: 1e308}], ("entries",))
    detail = err.value.errors[0]
    assert detail["loc"] == ["body", "entries", 1, field]
    assert detail["type"] == "less_than_equal" and detail["input"] == 1e308
    assert detail["msg"] == f"Input should be between 0 and 10000000 ({field})"


@pytest.mark.parametrize("field", ["actual_ttft_ms", "actual_tpot_ms"])
def test_observed_latency_is_zero_or_at_least_a_microsecond(field: str) -> None:
    sample = one(actual_ttft_ms=100.0, actual_tpot_ms=10.0)
    parse_samples([sample, {**sample, field: 0.0}, {**sample, field: 1e-3}])
    for tiny in (5e-324, 1e-300, 9.99e-4):
        with pytest.raises(ValidationFailure) as err:
            parse_samples([sample, {**sample, field: tiny}], ("entries",))
        detail = err.value.errors[0]
        assert detail["loc"] == ["body", "entries", 1, field] and detail["input"] == tiny
        assert detail["msg"] == f"Input should be 0 (not observed) or at least 0.001 ms ({field})"


def test_every_numeric_field_has_a_finite_documented_range() -> None:
    from pathlib import Path

    from slocast.latency.schema import (
        COUNT_FIELDS,
        OPTIONAL_COUNT_FIELDS,
        SAMPLE_FIELDS,
        UPPER_BOUNDS,
        TrainingEntry,
        bound_text,
        json_schema_components,
    )

    assert set(UPPER_BOUNDS) == set(SAMPLE_FIELDS)
    assert all(np.isfinite(v) and v > 0 for v in UPPER_BOUNDS.values())
    # the largest values of every field still build finite float32 features
    x = build_features(parse_features([one(**{k: UPPER_BOUNDS[k] for k in SAMPLE_FIELDS})]))
    assert np.isfinite(x).all()
    # the OpenAPI schema carries the same bounds, and integer fields say so
    properties = json_schema_components((TrainingEntry,))["TrainingEntry"]["properties"]
    for name, upper in UPPER_BOUNDS.items():
        assert properties[name]["maximum"] == upper and properties[name]["minimum"] == 0
        whole = name in COUNT_FIELDS + OPTIONAL_COUNT_FIELDS
        assert properties[name]["type"] == ("integer" if whole else "number"), name
    docs = (Path(__file__).parents[2] / "docs" / "latency.md").read_text()
    for name, upper in UPPER_BOUNDS.items():
        assert f"`{name}`" in docs and bound_text(upper) in docs, name


def test_valid_sample_rows_flags_what_validation_would_refuse() -> None:
    from slocast.latency.schema import valid_sample_rows

    sample = one(actual_ttft_ms=100.0, actual_tpot_ms=10.0, pod_type="decode")
    cols = parse_samples([sample] * 7)
    cols["actual_ttft_ms"][1] = np.nan
    cols["input_token_length"][2] = 1e308
    cols["num_request_waiting"][3] = 2.5
    cols["pod_type"][4] = 7
    cols["kv_cache_percentage"][5] = -np.inf
    cols["actual_tpot_ms"][6] = 1e-300
    assert valid_sample_rows(cols).tolist() == [True] + [False] * 6
    with pytest.raises(ValueError):
        valid_sample_rows({k: v for k, v in cols.items() if k != "actual_tpot_ms"})
    with pytest.raises(ValueError):
        valid_sample_rows({**cols, "num_request_running": cols["num_request_running"][:2]})


def test_feature_builder_uses_every_field() -> None:
    item = one(
        prefill_tokens_in_flight=64,
        decode_tokens_in_flight=128,
        encoder_matched_size=3,
        encoder_input_size=10,
        pod_type="decode",
    )
    x = build_features(parse_features([item]))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    row = dict(zip(FEATURE_NAMES, x[0].tolist(), strict=True))
    assert row["uncached_input_tokens"] == pytest.approx(75.0)
    assert row["prefill_backlog_tokens"] == pytest.approx(75.0 + 64)
    assert row["tokens_in_flight"] == 192
    assert row["queued_requests"] == 6
    assert row["kv_x_waiting"] == pytest.approx(1.0)
    assert row["kv_per_running"] == pytest.approx(0.125)
    assert row["encoder_unmatched_size"] == 7
    assert row["pod_type"] == 2
    # every input field changes the matrix: nothing is silently dropped
    for field, value in [
        ("prefill_tokens_in_flight", 1),
        ("decode_tokens_in_flight", 1),
        ("encoder_matched_size", 1),
        ("encoder_input_size", 1),
        ("num_tokens_generated", 7),
        ("pod_type", "prefill"),
    ]:
        changed = build_features(parse_features([one(**{field: value})]))
        assert not np.array_equal(changed, build_features(parse_features([one()]))), field


def test_monotone_features_only_grow_with_load() -> None:
    constraints = dict(zip(FEATURE_NAMES, monotone_constraints(), strict=True))
    base = build_features(parse_features([one()]))[0]
    for field in (
        "input_token_length",
        "num_request_waiting",
        "prefill_tokens_in_flight",
        "decode_tokens_in_flight",
    ):
        more = build_features(parse_features([one(**{field: BASE.get(field, 0) + 50})]))[0]
        for name, before, after in zip(FEATURE_NAMES, base, more, strict=True):
            if after != before:
                # a feature that moves with a load input must be constrained increasing
                assert after > before and constraints[name] == 1, (field, name)


def test_regimes_split_queue_depth_and_kv() -> None:
    cols = parse_features(
        [
            one(num_request_waiting=0, kv_cache_percentage=0.1),
            one(num_request_waiting=10, kv_cache_percentage=0.9),
            one(num_request_waiting=10, kv_cache_percentage=0.1),
        ]
    )
    ids = regimes(cols)
    assert len(set(ids.tolist())) == 3


@pytest.mark.parametrize(
    "members",
    [
        b'"kv_cache_percentage":"x","kv_cache_percentage":0.5',
        b'"kv_cache_percentage":0.5,"kv_cache_percentage":"x"',
        b'"kv_cache_percentage":2,"kv_\\u0063ache_percentage":0.5',  # the same key, escaped
    ],
)
def test_a_key_sent_twice_with_a_bad_value_names_the_repetition(members: bytes) -> None:
    """The 422 used to echo the other occurrence's (valid) value beside a message
    about the bad one; it now says the key is repeated. A key repeated with valid
    values is read as JSON parsers read it (the last one), as upstream does."""
    rest = msgspec.json.encode({k: v for k, v in BASE.items() if k != "kv_cache_percentage"})
    item = b"{" + members + b"," + rest[1:]
    with pytest.raises(ValidationFailure) as single:
        decode_request(item)
    with pytest.raises(ValidationFailure) as bulk:
        decode_bulk(b'{"requests":[' + msgspec.json.encode(BASE) + b"," + item + b"]}")
    for err, loc in ((single, ["body"]), (bulk, ["body", "requests", 1])):
        detail = err.value.errors[0]
        assert detail["loc"] == [*loc, "kv_cache_percentage"]
        assert detail["msg"] == "kv_cache_percentage appears 2 times: send it once"
        assert "input" not in detail
    valid = b'{"kv_cache_percentage":0.1,"kv_cache_percentage":0.7,' + rest[1:]
    assert decode_request(valid)["kv_cache_percentage"].tolist() == [0.7]


def test_the_repeated_key_scan_is_bounded() -> None:
    """The scan decodes the object whole, so an object over DUPLICATE_SCAN_BYTES
    (junk beside the error) is not scanned: its 422 is the plain one."""
    rest = msgspec.json.encode({k: v for k, v in BASE.items() if k != "kv_cache_percentage"})
    pad = b'"junk":"' + b"j" * DUPLICATE_SCAN_BYTES + b'",'
    body = b'{"kv_cache_percentage":2,' + pad + b'"kv_cache_percentage":0.5,' + rest[1:]
    with pytest.raises(ValidationFailure) as err:
        decode_request(body)
    detail = err.value.errors[0]
    assert detail["type"] == "less_than_equal" and detail["input"] == 0.5
