"""The native serving kernel (slocast.latency.native).

- The parser accepts only what the reference validator (orjson + parse_features)
  accepts, with identical columns; anything else goes to the reference, so every
  422 stays the reference's (differential tests, including random mutations).
- Branchless forests reproduce XGBoost, missing values included.
- The response splice equals orjson's rendering of the same objects.
- Served bounds equal the offline model's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import xgboost as xgb

from byte_mutations import mutated
from slocast.core.compiled_trees import CompiledLibrary
from slocast.latency import native
from slocast.latency.bundle import MANIFEST, publish, read_pointer, write_bundle
from slocast.latency.features import FEATURE_NAMES, build_features, regimes
from slocast.latency.model import (
    TARGET_COLUMNS,
    TARGET_PARAMS,
    TARGETS,
    fit_target_model,
    point_from_raw,
    upper_bound,
)
from slocast.latency.schema import (
    FRACTION_FIELDS,
    MAX_ITEMS,
    UPPER_BOUNDS,
    ValidationFailure,
    bound_text,
    feature_columns,
)
from slocast.latency.serving import feature_parser, load_served_model
from slocast.latency.synthetic import generate, to_records

BASE = {
    "kv_cache_percentage": 0.5,
    "input_token_length": 100,
    "num_request_waiting": 2,
    "num_request_running": 4,
    "num_tokens_generated": 0,
    "prefix_cache_score": 0.25,
}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> native.Kernel:
    lib_dir = tmp_path_factory.mktemp("kernel")
    native.ensure_kernel(lib_dir)
    library = native.verified_kernel(lib_dir)
    assert library is not None
    return native.Kernel(library)


@pytest.fixture(scope="module")
def parser(kernel: native.Kernel) -> native.Parser:
    return feature_parser(kernel)


def features(workload: str, n: int, seed: int) -> list[dict]:
    items = to_records(generate(workload, n, seed=seed))
    for item in items:
        item.pop("actual_ttft_ms")
        item.pop("actual_tpot_ms")
    return items


def outcome(body: bytes, key: str | None, parser=None):
    """Columns or the 422 errors of feature_columns, for comparing both paths."""
    try:
        cols = feature_columns(body, key, parser)
    except ValidationFailure as exc:
        return ("422", exc.errors)
    return ("ok", {name: (col.dtype, col.tolist()) for name, col in cols.items()})


def check_agrees(parser: native.Parser, body: bytes, key: str | None = "requests") -> bool:
    """The kernel either declines or returns the reference's columns; and the
    endpoint function answers identically with and without it. True if accepted."""
    got = parser.parse(body, key, MAX_ITEMS)
    reference = outcome(body, key)
    if got is not None:
        assert reference[0] == "ok", (body[:200], reference)
        assert list(got) == list(reference[1])
        for name, col in got.items():
            assert col.dtype == np.float64 and col.flags.c_contiguous
            dtype, values = reference[1][name]
            assert dtype == col.dtype
            np.testing.assert_array_equal(col, values, err_msg=name)
    assert outcome(body, key, parser) == reference
    return got is not None


# --- parser ----------------------------------------------------------------------


def test_parser_accepts_router_payloads_with_identical_columns(parser) -> None:
    rng = np.random.default_rng(0)
    for workload in ("sharegpt-like", "long-prompts", "extreme-contention"):
        items = features(workload, 300, seed=1)
        for i, item in enumerate(items):
            item["pod_type"] = ["", "prefill", "decode"][i % 3]
            if i % 4 == 0:  # optional fields left to their defaults
                for name in ("prefill_tokens_in_flight", "encoder_input_size", "pod_type"):
                    item.pop(name, None)
            if i % 5 == 0:  # another field order
                keys = list(item)
                rng.shuffle(keys)
                items[i] = {k: item[k] for k in keys}
        body = {"requests": items}
        assert check_agrees(parser, orjson.dumps(body))
        assert check_agrees(parser, orjson.dumps(body, option=orjson.OPT_INDENT_2))
        assert check_agrees(parser, json.dumps(body).encode())  # ", " and ": "
        assert check_agrees(parser, json.dumps({"model": "x", **body, "n": [1, {}]}).encode())
    assert check_agrees(parser, orjson.dumps(BASE), key=None)
    assert check_agrees(parser, b' \n{"requests" : [ %s ] }\t' % orjson.dumps(BASE))


@pytest.mark.parametrize(
    "text",
    [
        "0.6526840299640806",  # 16 digits: exact fast path
        "0.12345678901234567",  # 17 digits: strtod
        "0.1000000000000000055511151231257827",  # long mantissa
        "1e-1",
        "2.5E-1",
        "0.00000000000000000000000000123",
        "1",
        "0",
        "1.0",
        "0.0",
    ],
)
def test_fraction_numbers_round_like_orjson(parser, text: str) -> None:
    body = orjson.dumps({"requests": [BASE]}).replace(
        b'"kv_cache_percentage":0.5', b'"kv_cache_percentage":' + text.encode()
    )
    assert check_agrees(parser, body)


@pytest.mark.parametrize(
    ("text", "in_range"),
    [
        ("5", True),
        ("5.0", True),
        ("1e2", True),
        ("1E+2", True),
        ("0e0", True),
        ("9999999", True),
        ("1e7", True),  # the bound itself (MAX_TOKENS)
        ("10000000.000", True),
        ("9.999999e6", True),
        ("10000001", False),
        ("1.0000001e7", False),
        ("12345678901234567", False),
        ("900719925474099300", False),
        ("4.5e15", False),
        ("1e308", False),
        ("1.7976931348623157e308", False),
    ],
)
def test_count_numbers(parser, text: str, in_range: bool) -> None:
    body = orjson.dumps({"requests": [BASE]}).replace(
        b'"input_token_length":100', b'"input_token_length":' + text.encode()
    )
    # out of range: the kernel declines and the reference answers with its 422
    assert check_agrees(parser, body) is in_range
    assert (outcome(body, "requests")[0] == "ok") is in_range


def test_parser_declines_every_value_beyond_its_field_range(parser) -> None:
    """Each numeric field at its bound is accepted; just above it, or at 1e308, the
    kernel declines and the reference names the field and the range (422)."""
    for name, upper in UPPER_BOUNDS.items():
        if name in ("actual_ttft_ms", "actual_tpot_ms"):
            continue  # samples only: not in the prediction schema
        fraction = name in FRACTION_FIELDS
        at = {**BASE, name: upper if fraction else int(upper)}
        assert check_agrees(parser, orjson.dumps({"requests": [BASE, at]}))
        above = float(np.nextafter(upper, np.inf)) if fraction else int(upper) + 1
        for value in (above, 1e308):
            body = orjson.dumps({"requests": [BASE, {**BASE, name: value}]})
            assert parser.parse(body, "requests", MAX_ITEMS) is None, (name, value)
            with pytest.raises(ValidationFailure) as err:
                feature_columns(body, "requests", parser)
            detail = err.value.errors[0]
            assert detail["loc"] == ["body", "requests", 1, name]
            assert detail["type"] == "less_than_equal"
            assert f"between 0 and {bound_text(upper)}" in detail["msg"] and name in detail["msg"]
        single = orjson.dumps({**BASE, name: 1e308})
        assert parser.parse(single, None, 1) is None


def test_random_doubles_parse_exactly(parser) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [rng.random(2000), rng.random(200) ** 8, [1.0, 0.0, 2.0**-1022]]
    ).tolist()
    body = orjson.dumps({"requests": [{**BASE, "kv_cache_percentage": v} for v in values]})
    assert check_agrees(parser, body)
    # other renderings: Python's repr, 20 fixed digits, 17-digit scientific, subnormal
    rest = orjson.dumps({k: v for k, v in BASE.items() if k != "kv_cache_percentage"})[1:]
    for fmt in (repr, "{:.20f}".format, "{:.17e}".format, lambda v: repr(v * 1e-310)):
        items = b",".join(
            b'{"kv_cache_percentage": %s, %s' % (fmt(float(v)).encode(), rest) for v in values
        )
        check_agrees(parser, b'{"requests": [%s]}' % items)


@pytest.mark.parametrize(
    "body",
    [
        # every one of these is a 422 (or an unusual valid input) for the reference
        {"requests": []},
        {"requests": {}},
        {"wrong": [BASE]},
        {"requests": [BASE, 5]},
        {"requests": [BASE, {**BASE, "kv_cache_percentage": 1.2}]},
        {"requests": [{**BASE, "prefix_cache_score": -0.1}]},
        {"requests": [{**BASE, "input_token_length": -1}]},
        {"requests": [{**BASE, "input_token_length": 1.5}]},
        {"requests": [{**BASE, "input_token_length": "100"}]},
        {"requests": [{**BASE, "num_request_waiting": None}]},
        {"requests": [{**BASE, "pod_type": "gpu"}]},
        {"requests": [{**BASE, "pod_type": ["decode"]}]},
        {"requests": [{**BASE, "pod_type": None}]},
        {"requests": [{**BASE, "decode_tokens_in_flight": -5}]},
        {"requests": [{k: v for k, v in BASE.items() if k != "num_request_running"}]},
        {"requests": [{**BASE, "num_request_waiting": True}]},  # lax bool: reference decides
        {"requests": [{**BASE, "input_token_length": 2**63}]},
        {"requests": [{**BASE, "input_token_length": 2**64 - 1}]},
        {"requests": [{**BASE, "input_token_length": 10**30 * 1.0}]},
        {"requests": [{**BASE, "unknown": "caf\u00e9"}]},  # non-ASCII: reference decides
        {"requests": [BASE] * (MAX_ITEMS + 1)},
        [BASE],
        "requests",
    ],
)
def test_parser_leaves_every_other_body_to_the_reference(parser, body) -> None:
    check_agrees(parser, orjson.dumps(body))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b'{"requests": [%s]' % orjson.dumps(BASE),
        b'{"requests": [%s],}' % orjson.dumps(BASE),
        b'{"requests": [%s,]}' % orjson.dumps(BASE),
        b'{"requests": [%s]} x' % orjson.dumps(BASE),
        b'{"requests": [%s], "requests": [%s]}' % (orjson.dumps(BASE), orjson.dumps(BASE)),
        b'{"requests": [{"kv_cache_percentage": 0.5, "kv_cache_percentage": 0.7, %s]}'
        % orjson.dumps(BASE)[1:],
        b'{"requests": [{"kv_cache_percentage": 05, %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"kv_cache_percentage": .5, %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"kv_cache_percentage": 1., %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"kv_cache_percentage": -0, %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"kv_cache_percentage": 1e999, %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"kv_cache_percentage": NaN, %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"kv_\\u0063ache_percentage": 0.5, %s]}' % orjson.dumps(BASE)[25:],
        b'{"requests": [{"x": "a\\"b", %s]}' % orjson.dumps(BASE)[1:],
        b'{"requests": [{"x": [1, 2,], %s]}' % orjson.dumps(BASE)[1:],
        b'{"requests": [{"x": tru, %s]}' % orjson.dumps(BASE)[1:],
        b'{"requests": [{"x": "tab\there", %s]}' % orjson.dumps(BASE)[1:],
        b'\xef\xbb\xbf{"requests": [%s]}' % orjson.dumps(BASE),
    ],
)
def test_malformed_and_unusual_json(parser, raw: bytes) -> None:
    check_agrees(parser, raw)


def test_single_object_mode(parser) -> None:
    assert check_agrees(parser, orjson.dumps({**BASE, "pod_type": "decode", "x": [None]}), None)
    for body in ([BASE], {**BASE, "kv_cache_percentage": 2}, "x", {}):
        check_agrees(parser, orjson.dumps(body), None)


def test_random_mutations_never_accept_what_the_reference_rejects(parser) -> None:
    rng = np.random.default_rng(7)
    seeds = [
        orjson.dumps({"requests": [BASE, {**BASE, "pod_type": "prefill", "z": [1, {"a": None}]}]}),
        json.dumps({"requests": [{**BASE, "encoder_input_size": 7}]}).encode(),
    ]
    alphabet = b'{}[],:"0123456789.-+eE \\\ntfalsenul_xyz\xc3\xa9'
    accepted = 0
    for _ in range(4000):
        body = mutated(seeds[rng.integers(len(seeds))], rng, alphabet, 3)
        accepted += check_agrees(parser, body)
    assert accepted > 100  # the mutations also produced valid variants it accepted


# --- branchless forests ------------------------------------------------------------


def booster_file(tmp: Path, params: dict, rounds: int, missing: bool = False) -> Path:
    rng = np.random.default_rng(3)
    cols = generate("extreme-contention", 3000, seed=5)
    x = build_features(cols)
    if missing:
        x[rng.random(x.shape) < 0.05] = np.nan
    y = cols["actual_ttft_ms"] + 1.0
    booster = xgb.train(
        {"tree_method": "hist", "nthread": 1, "seed": 0, **params},
        xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES)),
        rounds,
    )
    path = tmp / f"model-{abs(hash(str(params)))}.ubj"
    booster.save_model(path)
    return path


@pytest.mark.parametrize(
    ("params", "rounds", "missing"),
    [
        ({"objective": "reg:squarederror", "max_depth": 4}, 200, False),
        ({"objective": "reg:squarederror", "max_depth": 3, "eta": 0.1}, 100, True),
        ({"objective": "reg:squarederror", "max_depth": 7, "min_child_weight": 30}, 40, True),
        ({"objective": "reg:quantileerror", "quantile_alpha": 0.9, "max_depth": 5}, 60, False),
        ({"objective": "reg:gamma", "max_depth": 4}, 50, False),
    ],
)
def test_flat_forest_reproduces_xgboost(kernel, tmp_path: Path, params, rounds, missing) -> None:
    path = booster_file(tmp_path, params, rounds, missing)
    flat = native.FlatForest(kernel, path)
    booster = xgb.Booster(model_file=str(path))
    fresh = build_features(generate("long-prompts", 2000, seed=6))
    probes = [
        fresh,
        fresh[:1],
        fresh[:7],
        fresh[:13],
        flat.probe_rows(),
        flat.probe_rows(missing=0.05),
    ]
    for x in probes:
        want = np.asarray(booster.inplace_predict(x), np.float64)
        for portable in (False, True):  # AVX2 (where available) and scalar code
            got = flat.predict(x, portable=portable)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# The same source built with AddressSanitizer, run in a child process with the ASan
# runtime preloaded (Python itself is not instrumented; PYTHONMALLOC=malloc lets ASan
# see every buffer). Shallow forests (depth 1-2: 2-4 leaves per tree) once made the
# AVX2 path load 8 leaf values per tree, reading past the end of the leaf table.
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
ASAN_CHILD = r"""
import ctypes, sys
from pathlib import Path
import numpy as np
import orjson
from slocast.latency import native
from slocast.latency.serving import feature_parser

kernel = native.Kernel(Path(sys.argv[1]))
simd_rows = 0
for model in sys.argv[2:]:
    flat = native.FlatForest(kernel, Path(model))
    for rows in (8, 16, 67, 1000):
        x = np.ascontiguousarray(flat.probe_rows(rows=rows))
        for portable in (False, True):
            assert np.isfinite(flat.predict(x, portable=portable)).all()
        simd_rows += rows if kernel.simd else 0
# the parser and the splice on exact-size buffers (a bytes object has a spare NUL)
parser = feature_parser(kernel)
base = {"kv_cache_percentage": 0.5, "input_token_length": 123456789,
        "num_request_waiting": 2, "num_request_running": 4, "num_tokens_generated": 0,
        "prefix_cache_score": 0.25, "pod_type": "decode", "x": [1, {"y": None}]}
body = orjson.dumps({"requests": [base, {**base, "kv_cache_percentage": 0.12345678901234567}]})
out = np.empty((len(parser.names), 4))
for end in range(len(body) + 1):
    exact = np.frombuffer(body[:end], dtype=np.uint8).copy()
    kernel._parse(ctypes.cast(exact.ctypes.data, ctypes.c_char_p), end, b"requests", 8,
                  *parser._args, out.ctypes.data, 4)
pairs = orjson.dumps(np.array([[1.5, 2.25]] * 9), option=orjson.OPT_SERIALIZE_NUMPY)
for end in range(len(pairs) + 1):
    exact = np.frombuffer(pairs[:end], dtype=np.uint8).copy()
    cap = end + 9 * 3 + 2  # what pairs_json allocates
    dest = np.empty(cap, dtype=np.uint8)
    kernel._pairs(ctypes.cast(exact.ctypes.data, ctypes.c_char_p), end, b"{", 1, b",", 1,
                  b"}", 1, dest.ctypes.data, cap)
print("simd rows", simd_rows)
"""


def test_kernel_reads_only_its_buffers_under_address_sanitizer(kernel, tmp_path: Path) -> None:
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not libasan or not Path(libasan).is_file():
        pytest.skip("gcc without AddressSanitizer")
    files = native.build_kernel(tmp_path / "asan", ASAN_FLAGS)
    assert files.library != native.kernel_files(tmp_path / "asan").library  # separate cache
    assert native.verified_kernel(tmp_path / "asan") is None  # never served
    # depth 1-2: 2-4 leaves; 3: one 8-float load; 4: two; 5-6: gathers; 7: scalar only
    depths = [1, 2, 3, 4, 5, 6, 7]
    models = [booster_file(tmp_path, {"max_depth": d, "min_child_weight": 0}, 7) for d in depths]
    # (the sanitized library is only ever loaded by the child: without the ASan
    # runtime preloaded, loading it aborts the process)
    assert [native.FlatForest(kernel, m).depth for m in models] == depths
    child = subprocess.run(
        [sys.executable, "-c", ASAN_CHILD, str(files.library), *map(str, models)],
        env={
            **os.environ,
            "LD_PRELOAD": libasan,
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99",
            "PYTHONMALLOC": "malloc",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = child.stderr[-6000:]
    assert "AddressSanitizer" not in child.stderr, report
    assert child.returncode == 0, report
    assert "simd rows" in child.stdout


def test_leaf_tables_hold_every_leaf_of_shallow_trees(kernel, tmp_path: Path) -> None:
    """Depth 1 and 2 forests over 8+ rows (the AVX2 path) equal XGBoost exactly."""
    fresh = build_features(generate("long-prompts", 1000, seed=6))
    for depth in (1, 2):
        path = booster_file(tmp_path, {"max_depth": depth, "eta": 0.3}, 25)
        flat = native.FlatForest(kernel, path)
        assert flat.depth == depth
        booster = xgb.Booster(model_file=str(path))
        for x in (fresh, fresh[:8], fresh[:9], flat.probe_rows()):
            want = np.asarray(booster.inplace_predict(x), np.float64)
            for portable in (False, True):
                np.testing.assert_array_equal(flat.predict(x, portable=portable), want)


def test_too_deep_forest_is_refused(kernel, tmp_path: Path) -> None:
    path = booster_file(tmp_path, {"max_depth": native.MAX_DEPTH + 2, "min_child_weight": 0}, 3)
    with pytest.raises(native.UnsupportedForest):
        native.FlatForest(kernel, path)


# --- response splice -----------------------------------------------------------


def test_pairs_json_equals_orjson(kernel) -> None:
    rng = np.random.default_rng(2)
    a = np.concatenate([rng.random(500) * 10.0 ** rng.integers(-8, 18, 500), [0.0, 1e16, 1e-7]])
    b = np.concatenate([rng.gamma(2, 10, 500), [np.nan, 5.0, 1.0]])
    tail = b',"x":"y","q":0.9}'
    pairs = orjson.dumps(np.column_stack((a, b)), option=orjson.OPT_SERIALIZE_NUMPY)
    got = kernel.pairs_json(pairs, a.shape[0], b'{"ttft_ms":', b',"tpot_ms":', tail)
    want = orjson.dumps(
        [{"ttft_ms": x, "tpot_ms": y, "x": "y", "q": 0.9} for x, y in zip(a, b, strict=True)],
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    assert got == want
    assert kernel.pairs_json(b"[1,2]", 1, b"{", b",", b"}") is None


# --- served model --------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """Models fitted offline, published without compiled trees, loaded for serving."""
    root = tmp_path_factory.mktemp("served")
    cols = generate("extreme-contention", 6000, seed=0)
    x, regime_ids = build_features(cols), regimes(cols)
    models = {}
    for target in TARGETS:
        y = cols[TARGET_COLUMNS[target]]
        rows = (y > 0).nonzero()[0]
        cut = int(0.8 * rows.shape[0])
        fit, cal = rows[:cut], rows[cut:]
        models[target] = fit_target_model(
            target, x[fit], y[fit], x[cal], y[cal], regime_ids[cal], 0.9, TARGET_PARAMS[target], 0
        )
    info = {
        "model_type": "xgboost",
        "objective_type": "t",
        "quantile": 0.9,
        "library_pending": True,
    }
    model_dir = root / "models"
    publish(model_dir, write_bundle(model_dir, models, info, compile_cache=None))
    model = load_served_model(model_dir, read_pointer(model_dir), root / "cache")
    return models, model


def test_served_bounds_equal_the_offline_models(served) -> None:
    models, model = served
    assert all(e.startswith(native.ENGINE_BRANCHLESS) for e in model.engines.values())
    fresh = generate("extreme-contention", 3000, seed=8)
    x, regime_ids = build_features(fresh), regimes(fresh)
    bounds = model.predict(fresh)
    for target in TARGETS:
        offline = models[target].predict(x, regime_ids)
        np.testing.assert_allclose(bounds[target], offline, rtol=1e-4)
        # the regime-offset table is upper_bound exactly, on the same points
        served = model.targets[target]
        point = point_from_raw(served.trees.predict_with("xgboost", x), served.objective)
        np.testing.assert_array_equal(
            bounds[target], upper_bound(point, served.calibration, regime_ids)
        )


def test_response_rendering_equals_orjson_of_the_objects(served, monkeypatch) -> None:
    from slocast.latency import prediction_app

    _, model = served
    fixed = prediction_app._common(model)
    monkeypatch.setattr(prediction_app, "_common", lambda _model: fixed)
    bounds = model.predict(generate("sharegpt-like", 257, seed=3))
    want = orjson.dumps(prediction_app._rows(model, bounds))
    assert prediction_app._rows_json(model, bounds) == want
    without_kernel = type(model)(**{**model.__dict__, "kernel": None, "parser": None})
    assert prediction_app._rows_json(without_kernel, bounds) == want


def test_bundles_ship_a_verified_kernel(served, tmp_path: Path, monkeypatch) -> None:
    from slocast.latency import bundle as bundle_module

    models, _ = served

    def no_trees(model_path: Path, lib_dir: Path) -> CompiledLibrary:  # no gcc for trees here
        lib_dir.mkdir(parents=True, exist_ok=True)
        files = CompiledLibrary(
            lib_dir / f"{model_path.stem}.so", lib_dir / f"{model_path.stem}.json"
        )
        files.library.write_text("not a library")
        files.manifest.write_text("{}")
        return files

    monkeypatch.setattr(bundle_module, "ensure_compiled", no_trees)
    info = {"model_type": "xgboost", "objective_type": "t", "quantile": 0.9}
    bundle = write_bundle(tmp_path / "models", models, info, compile_cache=tmp_path / "cache")
    files = native.kernel_files(bundle / "lib")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert f"lib/{files.library.name}" in manifest["files"]
    assert native.verified_kernel(bundle / "lib") == files.library
    # a tampered or foreign copy is not loaded
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle / "lib", tampered)
    with open(native.kernel_files(tampered).library, "ab") as f:
        f.write(b"\0")
    assert native.verified_kernel(tampered) is None
    foreign = tmp_path / "foreign"
    shutil.copytree(bundle / "lib", foreign)
    meta = json.loads(native.kernel_files(foreign).manifest.read_text())
    meta["toolchain"]["platform"] = "plan9-mips"
    native.kernel_files(foreign).manifest.write_text(json.dumps(meta))
    assert native.verified_kernel(foreign) is None
