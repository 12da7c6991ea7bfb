"""The cold-start prior: what a prediction server answers before any model is trained.

A router only sends traffic (and so training samples) to a pod whose latency sidecar
is Ready, so a predictor that waited for a trained model would never get one. Until
the trainer publishes a model that passed its checks (beat a constant on held-out
rows), every worker serves this prior and says so: ``"cold": true`` in ``/status``
and in every prediction, ``model_version`` ``"prior"``, engine ``"prior"``.

The prior is a deliberately pessimistic P90 in closed form, monotone in every load
input, so the one thing a router needs from it holds from the first request: a pod
with more work ahead ranks slower. The coefficients are orders of magnitude of a
30B-class model on one current GPU, each rounded towards slower:

    TTFT = 150 ms + 0.25 ms x (uncached prompt + prefill tokens in flight)
                  + 200 ms x waiting requests + 2 ms x running requests
                  + 200 ms x KV cache fraction
    TPOT =  20 ms + 0.75 ms x running requests
                  + 0.005 ms x decode tokens in flight
                  + 0.002 ms x prefill tokens in flight + 20 ms x KV cache fraction

(prefill at 4,000 tokens/s; every queued request assumed to bring a prefill of
200 ms; decode steps slowed by batch size, by the KV they read and by chunked
prefills sharing the step). It is not fitted to any trace; docs/latency.md lists it
and how to turn it off (``SLOCAST_LATENCY_COLD_PRIOR=false``: ``/readyz`` is then 503
until a model is trained).
"""

from __future__ import annotations

import numpy as np

from slocast.latency.features import FEATURE_NAMES

PRIOR_VERSION = "prior"

# (feature, ms per unit) added to the intercept; every coefficient >= 0, so the
# prior never decreases when load grows.
TTFT_INTERCEPT_MS = 150.0
TTFT_TERMS: tuple[tuple[str, float], ...] = (
    ("prefill_backlog_tokens", 0.25),
    ("num_request_waiting", 200.0),
    ("num_request_running", 2.0),
    ("kv_cache_percentage", 200.0),
)
TPOT_INTERCEPT_MS = 20.0
TPOT_TERMS: tuple[tuple[str, float], ...] = (
    ("num_request_running", 0.75),
    ("decode_tokens_in_flight", 0.005),
    ("prefill_tokens_in_flight", 0.002),
    ("kv_cache_percentage", 20.0),
)


class PriorTarget:
    """One target's prior: an intercept plus non-negative per-feature costs."""

    engine = "prior"
    objective = "prior"

    def __init__(self, intercept_ms: float, terms: tuple[tuple[str, float], ...]) -> None:
        if any(coef < 0 for _, coef in terms):
            raise ValueError("prior coefficients must be >= 0 (monotone in load)")
        self.intercept_ms = intercept_ms
        self._columns = np.array([FEATURE_NAMES.index(name) for name, _ in terms])
        self._coefs = np.array([coef for _, coef in terms], dtype=np.float64)

    def predict(self, x: np.ndarray, regime_ids: np.ndarray) -> np.ndarray:
        del regime_ids  # one closed form for every regime
        load = np.asarray(x[:, self._columns], dtype=np.float64)
        return self.intercept_ms + load @ self._coefs


def prior_targets() -> dict[str, PriorTarget]:
    return {
        "ttft": PriorTarget(TTFT_INTERCEPT_MS, TTFT_TERMS),
        "tpot": PriorTarget(TPOT_INTERCEPT_MS, TPOT_TERMS),
    }
