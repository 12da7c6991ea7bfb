"""The continuous-batching server simulator: schema, light load like the recorded
trace, loaded regimes like the held-out servers' description."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from slocast.latency.schema import POD_TYPES
from slocast.latency.simulator import (
    REGIME_NAMES,
    REGIMES,
    _Engine,
    simulate,
    to_trace_records,
    write_trace,
)
from slocast.latency.trace import load_trace

TRACE = Path(__file__).resolve().parents[2] / "../shared/datasets/llm-latency/sharegpt-h200.jsonl"
ROWS = 3000


@pytest.fixture(scope="module")
def traces() -> dict:
    return {regime: simulate(regime, ROWS, seed=1) for regime in REGIME_NAMES}


def ttft_rows(cols: dict) -> np.ndarray:
    return cols["actual_ttft_ms"] > 0


def test_fast_enough() -> None:
    started = time.perf_counter()
    simulate("overloaded", 4000, seed=2)
    simulate("light", 4000, seed=2)
    assert time.perf_counter() - started < 10


def test_schema_is_the_datasets(traces: dict, tmp_path: Path) -> None:
    for regime, cols in traces.items():
        records = to_trace_records(cols)
        assert len(records) == ROWS, regime
        if TRACE.exists():
            real = json.loads(TRACE.read_text().splitlines()[0])
            assert list(records[0]) == list(real)
        # one observation per row, the other target 0, as recorded traces
        ttft = np.array([r["actual_ttft_ms"] for r in records])
        tpot = np.array([r["actual_tpot_ms"] for r in records])
        assert ((ttft > 0) ^ (tpot > 0)).all(), regime
        assert 0.4 < (ttft > 0).mean() < 0.6
        assert all(isinstance(r["num_request_waiting"], int) for r in records)
    path = tmp_path / "sim.jsonl"
    write_trace(traces["saturated"], path)
    loaded = load_trace(path)  # validates with the training-sample schema
    np.testing.assert_allclose(
        loaded["input_token_length"], traces["saturated"]["input_token_length"]
    )


@pytest.mark.skipif(not TRACE.exists(), reason="needs ../shared/datasets/llm-latency")
def test_light_regime_looks_like_the_sharegpt_trace(traces: dict) -> None:
    real, sim = load_trace(TRACE), traces["light"]

    def med(cols, name, rows=None):
        v = cols[name] if rows is None else cols[name][rows]
        return float(np.median(v))

    assert 0.5 < med(sim, "input_token_length") / med(real, "input_token_length") < 2
    assert med(sim, "num_request_waiting") == med(real, "num_request_waiting") == 0
    assert 0.5 < med(sim, "num_request_running") / med(real, "num_request_running") < 2
    assert 0.5 < med(sim, "kv_cache_percentage") / med(real, "kv_cache_percentage") < 2
    real_ttft = med(real, "actual_ttft_ms", ttft_rows(real))
    sim_ttft = med(sim, "actual_ttft_ms", ttft_rows(sim))
    assert 0.5 < sim_ttft / real_ttft < 2  # same order of magnitude (tens of ms)
    real_tpot = med(real, "actual_tpot_ms", ~ttft_rows(real))
    sim_tpot = med(sim, "actual_tpot_ms", ~ttft_rows(sim))
    assert 0.8 < sim_tpot / real_tpot < 1.25
    assert np.percentile(sim["kv_cache_percentage"], 99) < 0.1


def test_loaded_regimes(traces: dict) -> None:
    over, sat = traces["overloaded"], traces["saturated"]
    for cols in (over, sat):
        prompts = cols["input_token_length"]
        assert prompts.min() >= 4000 and prompts.max() <= 12000
        # bimodal prompt mix: both the 4-8k and the 8-12k classes
        assert 0.25 < (prompts > 8000).mean() < 0.65
    assert np.median(over["num_request_waiting"]) > 50
    # hundreds of queued and running requests
    in_system = over["num_request_waiting"] + over["num_request_running"]
    assert np.median(in_system) > 100 and np.percentile(in_system, 90) > 200
    ttft = over["actual_ttft_ms"][ttft_rows(over)]
    assert np.percentile(ttft, 5) < 5_000 and np.percentile(ttft, 90) > 100_000
    assert ttft.max() < 320_000  # clients time out after 300 s
    # KV cache 10-90 % full: queues build on prefill compute, not on a full cache
    # (a cache stuck above 90 % would be another regime than the described one)
    for cols in (over, sat):
        kv = cols["kv_cache_percentage"]
        assert 0.02 < np.percentile(kv, 10) < 0.3 and 0.6 < np.percentile(kv, 90) < 0.9
        assert (kv > 0.9).mean() < 0.05
    sat_ttft = sat["actual_ttft_ms"][ttft_rows(sat)]
    assert np.percentile(sat_ttft, 10) < 1_000 and np.percentile(sat_ttft, 90) > 10_000
    # moderate sits between light and saturated
    mod = traces["moderate"]
    assert np.median(traces["light"]["input_token_length"]) < np.median(mod["input_token_length"])
    assert np.median(mod["actual_ttft_ms"][ttft_rows(mod)]) < np.median(sat_ttft)


def test_disaggregated_regime(traces: dict) -> None:
    """P/D: TTFT rows see the prefill pod, TPOT rows the decode pod, as routed."""
    cols = traces["disaggregated"]
    ttft = ttft_rows(cols)
    assert (cols["pod_type"][ttft] == POD_TYPES["prefill"]).all()
    assert (cols["pod_type"][~ttft] == POD_TYPES["decode"]).all()
    # the prefill pod releases each request's KV cache after its first token and
    # works through a queue; the decode pod holds tens of requests and their caches
    assert np.median(cols["num_request_running"][ttft]) <= 2
    assert np.percentile(cols["num_request_waiting"][ttft], 90) > 5
    assert np.median(cols["num_request_running"][~ttft]) > 20
    assert np.percentile(cols["kv_cache_percentage"][ttft], 90) < 0.05
    kv = cols["kv_cache_percentage"][~ttft]
    assert 0.1 < np.median(kv) < 0.7 and (kv > 0.9).mean() < 0.05
    # the decode pod's tokens in flight are not recorded (0, as in the real traces)
    assert (cols["prefill_tokens_in_flight"][~ttft] == 0).all()
    # queueing near the prefill pod's capacity spreads TTFT over more than a decade
    ttft_ms = cols["actual_ttft_ms"][ttft]
    assert np.percentile(ttft_ms, 10) < 1_000 and np.percentile(ttft_ms, 90) > 2_500
    assert np.percentile(ttft_ms, 90) / np.percentile(ttft_ms, 10) > 10
    # decode without prefill chunks in its steps: TPOT follows the decode batch
    tpot = cols["actual_tpot_ms"][~ttft]
    assert 15 < np.median(tpot) < 60
    assert np.corrcoef(tpot, cols["num_request_running"][~ttft])[0, 1] > 0.3


def test_router_view_is_the_last_scrape_before_a_time() -> None:
    """How a decode pod's features are read at a request's arrival (P/D): the
    router's last scrape at or before it, nothing before the first scrape."""
    engine = _Engine(REGIMES["disaggregated"].server, None, "decode")
    engine.history = [(0.0, 0.1, 0, 5), (1.0, 0.2, 1, 7), (2.5, 0.3, 0, 9)]
    seen = engine.seen_at(np.array([-1.0, 0.0, 0.9, 1.0, 2.4, 9.0]))
    np.testing.assert_allclose(seen[:, 0], [0.0, 0.1, 0.1, 0.2, 0.2, 0.3])
    np.testing.assert_array_equal(seen[:, 1], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(seen[:, 2], [0, 5, 5, 7, 7, 9])


def test_latency_is_not_a_function_of_the_features(traces: dict) -> None:
    """Hidden state: requests with near-identical snapshots see very different TTFTs."""
    cols = traces["saturated"]
    rows = ttft_rows(cols) & (cols["num_request_waiting"] == 0)
    rows &= cols["input_token_length"] < 6000
    ttft = cols["actual_ttft_ms"][rows]
    assert rows.sum() > 100
    assert np.percentile(ttft, 90) / np.percentile(ttft, 10) > 3
