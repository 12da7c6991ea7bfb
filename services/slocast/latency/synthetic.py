"""Synthetic latency workloads with a known law, for tests and generalisation checks.

Latency follows a linear law in the load features with multiplicative noise
(gamma, coefficient of variation ~0.35), so the noise grows with the latency as in
real servers. Workloads differ in the input distribution:

- ``sharegpt-like``: short chat prompts, almost no queueing (like the recorded trace);
- ``long-prompts``: 2k-32k token prompts with prefix-cache hits;
- ``extreme-contention``: deep queues, KV cache near full, many tokens in flight.

Rows carry either a TTFT or a TPOT observation (the other is 0), as in recorded traces.

Because the law is known, so is the exact conditional quantile of each row
(:func:`conditional_quantile_ms`): the best bound any model could predict from the
features, which protocol B scores beside slocast and the reference (the "oracle").
"""

from __future__ import annotations

import numpy as np
from scipy.stats import gamma

from slocast.latency.schema import Columns

# Request fields that are counts: written as JSON integers, as a router sends them.
INTEGER_FIELDS = frozenset(
    {
        "input_token_length",
        "num_request_waiting",
        "num_request_running",
        "num_tokens_generated",
        "prefill_tokens_in_flight",
        "decode_tokens_in_flight",
        "encoder_matched_size",
        "encoder_input_size",
    }
)
NOISE_SHAPE = 8.0  # gamma shape: CV = 1 / sqrt(8) ~ 0.35
WORKLOADS = ("sharegpt-like", "long-prompts", "extreme-contention")


def ttft_mean_ms(cols: Columns) -> np.ndarray:
    """The known TTFT law: prefill work, queueing and KV pressure, all additive."""
    uncached = cols["input_token_length"] * (1 - cols["prefix_cache_score"])
    return (
        20.0
        + 0.05 * uncached
        + 0.02 * cols["prefill_tokens_in_flight"]
        + 15.0 * cols["num_request_waiting"]
        + 1.0 * cols["num_request_running"]
        + 40.0 * cols["kv_cache_percentage"]
    )


def tpot_mean_ms(cols: Columns) -> np.ndarray:
    """The known TPOT law: batch size, KV usage and decode tokens in flight."""
    return (
        8.0
        + 0.3 * cols["num_request_running"]
        + 10.0 * cols["kv_cache_percentage"]
        + 0.001 * cols["decode_tokens_in_flight"]
        + 0.2 * cols["num_request_waiting"]
        + 0.0005 * cols["input_token_length"]
    )


def conditional_quantile_ms(
    target: str, cols: Columns, q: float, slowdown: float = 1.0
) -> np.ndarray:
    """The exact ``q``-quantile of ``target`` ("ttft" or "tpot") given each row's
    features, for rows drawn by :func:`generate` with the same ``slowdown``: the law
    times the gamma noise's quantile."""
    laws = {"ttft": ttft_mean_ms, "tpot": tpot_mean_ms}
    if target not in laws:
        raise ValueError(f"unknown target {target!r}; choose from {sorted(laws)}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    noise_quantile = gamma.ppf(q, NOISE_SHAPE, scale=1.0 / NOISE_SHAPE)
    return slowdown * laws[target](cols) * noise_quantile


def sample_features(workload: str, n: int, rng: np.random.Generator) -> Columns:
    if workload == "sharegpt-like":
        input_len = np.clip(rng.lognormal(5.0, 1.0, n), 4, 4000).round()
        waiting = rng.poisson(0.05, n)
        running = rng.integers(0, 32, n)
        kv = np.clip(running / 600 + rng.normal(0, 0.005, n), 0, 1)
        prefix = np.where(rng.random(n) < 0.05, rng.random(n), 0.0)
    elif workload == "long-prompts":
        input_len = rng.integers(2000, 32000, n)
        waiting = rng.poisson(1.0, n)
        running = rng.integers(0, 16, n)
        kv = np.clip(running / 20 + rng.normal(0, 0.05, n), 0, 1)
        prefix = np.where(rng.random(n) < 0.5, rng.random(n), 0.0)
    elif workload == "extreme-contention":
        input_len = np.clip(rng.lognormal(6.0, 1.0, n), 4, 16000).round()
        waiting = rng.integers(0, 200, n)
        running = rng.integers(32, 256, n)
        kv = np.clip(0.6 + 0.4 * rng.random(n), 0, 1)
        prefix = np.where(rng.random(n) < 0.2, rng.random(n), 0.0)
    else:
        raise ValueError(f"unknown workload {workload!r}; choose from {WORKLOADS}")
    prefill_tif = rng.integers(0, 64, n) * rng.integers(0, 256, n)
    decode_tif = running * rng.integers(0, 512, n)
    zeros = np.zeros(n)
    return {
        "kv_cache_percentage": kv.astype(np.float64),
        "input_token_length": np.asarray(input_len, np.float64),
        "num_request_waiting": waiting.astype(np.float64),
        "num_request_running": running.astype(np.float64),
        "num_tokens_generated": zeros.copy(),
        "prefix_cache_score": prefix.astype(np.float64),
        "prefill_tokens_in_flight": prefill_tif.astype(np.float64),
        "decode_tokens_in_flight": decode_tif.astype(np.float64),
        "encoder_matched_size": zeros.copy(),
        "encoder_input_size": zeros.copy(),
        "pod_type": zeros.copy(),
    }


def generate(workload: str, n: int, seed: int, slowdown: float = 1.0) -> Columns:
    """``n`` samples; ``slowdown`` multiplies both laws (a drifted or slower server)."""
    rng = np.random.default_rng(seed)
    cols = sample_features(workload, n, rng)
    noise = rng.gamma(NOISE_SHAPE, 1.0 / NOISE_SHAPE, size=(2, n))
    ttft = slowdown * ttft_mean_ms(cols) * noise[0]
    tpot = slowdown * tpot_mean_ms(cols) * noise[1]
    is_ttft = rng.random(n) < 0.5
    cols["actual_ttft_ms"] = np.where(is_ttft, ttft, 0.0)
    cols["actual_tpot_ms"] = np.where(is_ttft, 0.0, tpot)
    return cols


def to_records(cols: Columns) -> list[dict]:
    """Columns back to JSON-ready objects (what a router would post)."""
    pod_names = {0: "", 1: "prefill", 2: "decode"}
    names = [k for k in cols if k != "pod_type"]
    lists = {
        k: (cols[k].astype(np.int64) if k in INTEGER_FIELDS else cols[k]).tolist() for k in names
    }
    pods = [pod_names[int(p)] for p in cols["pod_type"]]
    return [{**{k: lists[k][i] for k in names}, "pod_type": pods[i]} for i in range(len(pods))]
