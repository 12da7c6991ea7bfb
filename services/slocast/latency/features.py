"""The one feature builder: validated columns in, float32 matrix out.

Training, calibration, evaluation and every serving endpoint call
:func:`build_features`, so what a model was trained on is exactly what it sees when
serving (the upstream server dropped the tokens-in-flight fields on two of its three
endpoints; here that cannot happen).

Derived features say what the scheduler actually has to do:

- ``uncached_input_tokens`` = input length x (1 - prefix cache score): prefill work
  this request brings;
- ``prefill_backlog_tokens`` = uncached input + prefill tokens in flight: prefill
  work ahead of and including this request;
- ``tokens_in_flight`` = prefill + decode tokens in flight;
- ``queued_requests`` = waiting + running;
- ``kv_x_waiting`` = KV usage x waiting: queueing bites when memory is full;
- ``kv_per_running`` = KV usage / running requests: low when requests were admitted
  but their KV is not allocated yet (a stalled prefill), the regime of the trace's
  multi-second TTFT bursts;
- ``encoder_unmatched_size`` = encoder input not covered by the encoder cache.

Monotone constraints (+1) apply to the load inputs routers rely on (input length,
waiting requests, tokens in flight) and to derived features that only grow with
them, so "more load never lowers the prediction" holds by construction.
"""

from __future__ import annotations

import numpy as np

from slocast.latency.schema import Columns

FEATURE_NAMES: tuple[str, ...] = (
    "kv_cache_percentage",
    "input_token_length",
    "num_request_waiting",
    "num_request_running",
    "num_tokens_generated",
    "prefix_cache_score",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
    "encoder_matched_size",
    "encoder_input_size",
    "pod_type",
    "uncached_input_tokens",
    "prefill_backlog_tokens",
    "tokens_in_flight",
    "queued_requests",
    "kv_x_waiting",
    "kv_per_running",
    "encoder_unmatched_size",
)

INCREASING: frozenset[str] = frozenset(
    {
        "input_token_length",
        "num_request_waiting",
        "prefill_tokens_in_flight",
        "decode_tokens_in_flight",
        "encoder_input_size",
        "uncached_input_tokens",
        "prefill_backlog_tokens",
        "tokens_in_flight",
        "queued_requests",
        "kv_x_waiting",
        "encoder_unmatched_size",
    }
)


def monotone_constraints() -> tuple[int, ...]:
    """XGBoost ``monotone_constraints`` aligned with :data:`FEATURE_NAMES`."""
    return tuple(1 if name in INCREASING else 0 for name in FEATURE_NAMES)


def build_features(cols: Columns) -> np.ndarray:
    """Feature matrix ``(rows, len(FEATURE_NAMES))`` as C-contiguous float32."""
    n = cols["kv_cache_percentage"].shape[0]
    out = np.empty((len(FEATURE_NAMES), n), dtype=np.float64)
    kv = cols["kv_cache_percentage"]
    input_len = cols["input_token_length"]
    waiting = cols["num_request_waiting"]
    running = cols["num_request_running"]
    prefill_tif = cols["prefill_tokens_in_flight"]
    decode_tif = cols["decode_tokens_in_flight"]
    uncached = input_len * (1.0 - cols["prefix_cache_score"])
    out[0] = kv
    out[1] = input_len
    out[2] = waiting
    out[3] = running
    out[4] = cols["num_tokens_generated"]
    out[5] = cols["prefix_cache_score"]
    out[6] = prefill_tif
    out[7] = decode_tif
    out[8] = cols["encoder_matched_size"]
    out[9] = cols["encoder_input_size"]
    out[10] = cols["pod_type"]
    out[11] = uncached
    out[12] = uncached + prefill_tif
    out[13] = prefill_tif + decode_tif
    out[14] = waiting + running
    out[15] = kv * waiting
    out[16] = kv / np.maximum(running, 1.0)
    out[17] = np.maximum(cols["encoder_input_size"] - cols["encoder_matched_size"], 0.0)
    return np.ascontiguousarray(out.T, dtype=np.float32)


# Regimes for windowing and per-regime calibration: queue depth x KV usage.
WAITING_EDGES = np.array([1.0, 3.0, 8.0])  # 0 | 1-2 | 3-7 | 8+
KV_EDGES = np.array([0.25, 0.5, 0.75])  # quartiles of KV usage
NUM_REGIMES = (len(WAITING_EDGES) + 1) * (len(KV_EDGES) + 1)


def regimes(cols: Columns) -> np.ndarray:
    """Regime id per row in ``[0, NUM_REGIMES)`` from queue depth and KV usage."""
    w = np.searchsorted(WAITING_EDGES, cols["num_request_waiting"], side="right")
    k = np.searchsorted(KV_EDGES, cols["kv_cache_percentage"], side="right")
    return (w * (len(KV_EDGES) + 1) + k).astype(np.int64)
