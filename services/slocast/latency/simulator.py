"""A continuous-batching LLM server simulator that records latency traces.

The recorded ShareGPT trace shows one regime only (light load: no queue, KV cache
under 6 %). Loaded servers behave differently: hundreds of queued requests, KV
cache 10-90 % full, 4-12k token prompts, TTFT from about a second to minutes. This
module simulates such a server (vLLM-like scheduler on one GPU replica) and emits
traces with the exact schema of ``../shared/datasets/llm-latency`` so protocol B
can run on regimes we cannot record here.

The server, one engine step at a time:

- arrivals: Poisson with a time-varying rate, optionally bursty (on/off
  modulation); requests join a FCFS waiting queue;
- every step has a token budget (chunked prefill): each running request in decode
  takes one token, the rest goes to prefill chunks of admitted requests, then
  waiting requests are admitted while the budget, the batch size limit and free
  KV cache allow;
- KV cache: an admitted request holds its prompt plus generated tokens; when a
  decode step needs more blocks than are free, the most recently admitted request
  is preempted (its KV is freed and it is recomputed later: TTFT or TPOT jumps);
- prefix cache: requests may share a prefix (system prompt, document); a prefix
  is cached while it was used recently, longer when the KV cache has room; the
  router's ``prefix_cache_score`` is its estimate at arrival, the hit happens (or
  not, if evicted meanwhile) at admission;
- step time: weights + batch + KV-attention + prefill-token costs (H200-like
  numbers for a 32B model), with jitter, rare slow steps (TPOT spikes) and rare
  multi-second stalls (TTFT stalls, as in the recorded trace);
- optional P/D disaggregation: prefill on a prefill engine, decode on a decode
  engine that receives the KV cache (TTFT rows carry the prefill pod's state,
  TPOT rows the decode pod's, both as the router saw them when it routed the
  request: the decode pod's state at arrival, not at the later KV transfer).

Features are the router's snapshot when the request arrives: queue lengths and KV
usage from the last metrics scrape (stale by up to ``scrape_s``), prefill tokens in
flight tracked by the router itself. Latency is measured by the simulation, so it
depends on hidden state (prompts ahead in the queue, output lengths of the running
requests, future preemptions and arrivals), not only on the features.

As in recorded traces, every request emits a TTFT row (at its first token) and a
TPOT row (at completion) with the same features; the other target is 0.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slocast.latency.schema import Columns
from slocast.latency.synthetic import INTEGER_FIELDS

# The dataset's fields, in the recorded order.
TRACE_FIELDS = (
    "kv_cache_percentage",
    "input_token_length",
    "num_request_waiting",
    "num_request_running",
    "num_tokens_generated",
    "actual_ttft_ms",
    "actual_tpot_ms",
    "prefix_cache_score",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
)


@dataclass(frozen=True)
class ServerConfig:
    """One replica (H200-like, 32B model) and its scheduler."""

    kv_capacity_tokens: int = 400_000
    token_budget: int = 4096  # max batched tokens per step (chunked prefill)
    max_running: int = 256
    # step time (ms) = base + per_seq x decoding seqs + per_prefill_token x prefill
    # tokens + kv_attention x KV fraction in use (decode attention reads the cache)
    base_ms: float = 16.5
    per_seq_ms: float = 0.08
    per_prefill_token_ms: float = 0.09
    kv_attention_ms: float = 18.0
    jitter: float = 0.04  # lognormal sigma of every step
    slow_step_p: float = 0.004  # a step 2-6x slower (TPOT spikes)
    stall_p: float = 2e-5  # per step: a 0.5-5 s stall
    overhead_ms: float = 18.0  # client/router overhead on TTFT (median)
    scrape_s: float = 0.5  # router's metrics scrape period
    block: int = 16  # KV block size


@dataclass(frozen=True)
class Workload:
    """Arrivals and request sizes."""

    rate_start: float  # requests/s at the start of the trace
    rate_end: float  # ... and at the end (linear ramp)
    burst_factor: float = 1.0  # rate multiplier while a burst is on
    burst_on_s: float = 0.0  # mean burst duration (0: no bursts)
    burst_off_s: float = 60.0  # mean time between bursts
    wave_period_s: float = 0.0  # sinusoidal modulation of the rate (0: none)
    wave_depth: float = 0.0
    # prompts: a mix of classes (weight, lognormal median, sigma, min, max)
    prompt_classes: tuple[tuple[float, float, float, int, int], ...] = ((1.0, 170.0, 1.2, 4, 1500),)
    # outputs: the same form
    output_classes: tuple[tuple[float, float, float, int, int], ...] = ((1.0, 150.0, 1.0, 2, 2000),)
    prefix_share: float = 0.0  # share of requests with a shared prefix
    prefix_groups: int = 8
    prefix_fraction: tuple[float, float] = (0.3, 0.8)  # of the prompt
    prefix_ttl_s: float = 120.0  # cached this long after last use (x free KV share)
    timeout_s: float = 0.0  # clients give up waiting after this (0: never)
    warmup: float = 0.1  # share of requests dropped at the start (state builds up)


@dataclass(frozen=True)
class Regime:
    server: ServerConfig
    workload: Workload
    disaggregated: bool = False


# Rates are per replica. Capacity with 4-12k prompts is ~0.8-1 request/s.
# The loaded regimes' replica stores its KV cache in FP8 (128 KiB per token for a
# 64-layer, 8-KV-head model): ~90 GB left on an H200 holds ~700k tokens. With it,
# overload is bound by prefill compute (the token budget), as on the held-out
# servers (hundreds queued, KV 10-90 %); with a BF16 cache (~400k tokens) it was
# bound by memory instead and sat above 90 %.
_LOADED_SERVER = ServerConfig(kv_capacity_tokens=700_000)
_LOADED_PROMPTS = ((0.55, 5500.0, 0.2, 4000, 8000), (0.45, 10000.0, 0.12, 8000, 12000))
_LOADED_OUTPUTS = ((0.6, 40.0, 0.6, 2, 200), (0.4, 200.0, 0.5, 50, 1000))
# Half chat-sized, half document-sized prompts (moderate load and the P/D pair).
_MIXED_PROMPTS = ((0.5, 1500.0, 0.8, 200, 8000), (0.5, 6000.0, 0.3, 4000, 12000))
REGIMES: dict[str, Regime] = {
    # The recorded ShareGPT trace: chat prompts, load stepped up (1 -> 16 QPS over 2
    # replicas), no queue, KV under 6 %.
    "light": Regime(
        ServerConfig(kv_capacity_tokens=280_000),
        Workload(
            rate_start=0.3,
            rate_end=5.0,
            output_classes=((1.0, 120.0, 1.0, 2, 2000),),
            prefix_share=0.02,
            warmup=0.0,
        ),
    ),
    # Busy but keeping up: mixed prompts, short queues, KV 10-60 %.
    "moderate": Regime(
        ServerConfig(),
        Workload(
            rate_start=0.9,
            rate_end=1.2,
            burst_factor=1.6,
            burst_on_s=20.0,
            burst_off_s=90.0,
            prompt_classes=_MIXED_PROMPTS,
            output_classes=((0.7, 150.0, 0.8, 2, 1500), (0.3, 500.0, 0.5, 50, 2000)),
            prefix_share=0.3,
        ),
    ),
    # At capacity: 4-12k prompts (bimodal), queues of tens in bursts, KV 5-80 %.
    "saturated": Regime(
        _LOADED_SERVER,
        Workload(
            rate_start=1.1,
            rate_end=1.2,
            burst_factor=1.8,
            burst_on_s=30.0,
            burst_off_s=120.0,
            prompt_classes=_LOADED_PROMPTS,
            output_classes=_LOADED_OUTPUTS,
            prefix_share=0.3,
            warmup=0.15,
        ),
    ),
    # Beyond capacity in waves: hundreds queued, TTFT from seconds to minutes.
    "overloaded": Regime(
        _LOADED_SERVER,
        Workload(
            rate_start=1.1,
            rate_end=1.1,
            burst_factor=2.0,
            burst_on_s=30.0,
            burst_off_s=150.0,
            wave_period_s=1200.0,
            wave_depth=0.8,
            prompt_classes=_LOADED_PROMPTS,
            output_classes=_LOADED_OUTPUTS,
            prefix_share=0.3,
            timeout_s=300.0,
            warmup=0.2,
        ),
    ),
    # P/D disaggregation (llm-d's prefill/decode split): one prefill pod in front of one
    # decode pod, long outputs. The prefill pod queues in bursts (TTFT 0.3-30 s); the
    # decode pod runs tens of requests with its KV cache 20-55 % full, so TPOT follows
    # its batch. TTFT rows carry the prefill pod's state (pod_type "prefill"), TPOT rows
    # the decode pod's ("decode").
    "disaggregated": Regime(
        _LOADED_SERVER,
        Workload(
            rate_start=2.2,
            rate_end=2.6,
            burst_factor=1.5,
            burst_on_s=30.0,
            burst_off_s=120.0,
            prompt_classes=_MIXED_PROMPTS,
            output_classes=((0.6, 300.0, 0.7, 10, 2000), (0.4, 1000.0, 0.5, 100, 4000)),
            prefix_share=0.3,
            timeout_s=300.0,
            warmup=0.2,
        ),
        disaggregated=True,
    ),
}
REGIME_NAMES = tuple(REGIMES)


def _mixture(classes, n: int, rng: np.random.Generator) -> np.ndarray:
    weights = np.array([c[0] for c in classes], np.float64)
    which = rng.choice(len(classes), size=n, p=weights / weights.sum())
    out = np.empty(n)
    for k, (_, median, sigma, low, high) in enumerate(classes):
        members = which == k
        out[members] = np.clip(rng.lognormal(np.log(median), sigma, members.sum()), low, high)
    return np.round(out)


def _arrival_times(w: Workload, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` arrival times of a Poisson process with a ramped, bursty, waving rate."""
    # Thinning: candidates at the peak rate, kept with probability rate(t) / peak.
    peak = max(w.rate_start, w.rate_end) * max(w.burst_factor, 1.0) * (1.0 + w.wave_depth)
    duration = 2.0 * n / (w.rate_start + w.rate_end)  # of the ramp
    bursts = []
    if w.burst_on_s > 0:
        t = rng.exponential(w.burst_off_s)
        while t < duration * 3:
            on = rng.exponential(w.burst_on_s)
            bursts.append((t, t + on))
            t += on + rng.exponential(w.burst_off_s)
    starts = np.array([b[0] for b in bursts]) if bursts else np.zeros(0)
    ends = np.array([b[1] for b in bursts]) if bursts else np.zeros(0)
    times: list[np.ndarray] = []
    kept, t0 = 0, 0.0
    while kept < n:
        gaps = rng.exponential(1.0 / peak, size=4 * n)
        cand = t0 + np.cumsum(gaps)
        t0 = cand[-1]
        # the ramp runs over the expected duration of the trace
        progress = np.clip(cand / duration, 0.0, 1.0)
        rate = w.rate_start + (w.rate_end - w.rate_start) * progress
        if w.wave_period_s > 0:
            rate = rate * (1.0 + w.wave_depth * np.sin(2 * np.pi * cand / w.wave_period_s))
        if bursts:
            idx = np.searchsorted(starts, cand, side="right") - 1
            inside = (idx >= 0) & (cand < ends[np.maximum(idx, 0)])
            rate = np.where(inside, rate * w.burst_factor, rate)
        keep = cand[rng.random(cand.shape[0]) < rate / peak]
        times.append(keep)
        kept += keep.shape[0]
    return np.concatenate(times)[:n]


class _Engine:
    """One vLLM-like engine: waiting queue, running batch, KV cache.

    ``mode``: "both" (prefill and decode, chunked), "prefill" (a P/D prefill pod: a
    request leaves after its first token) or "decode" (a P/D decode pod: requests
    arrive with their KV cache and only decode).
    """

    def __init__(self, cfg: ServerConfig, sim: _Simulation, mode: str = "both") -> None:
        self.cfg = cfg
        self.sim = sim
        self.mode = mode
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.kv_used = 0
        self.time = 0.0
        self.scraped = (0.0, 0, 0)  # kv fraction, waiting, running at the last scrape
        self.next_scrape = 0.0
        # every scrape (time, kv, waiting, running): the router's view at any time
        self.history: list[tuple[float, float, int, int]] = []

    def kv_fraction(self) -> float:
        return self.kv_used / self.cfg.kv_capacity_tokens

    def scrape(self) -> None:
        if self.next_scrape <= self.time:
            self.scraped = (self.kv_fraction(), len(self.waiting), len(self.running))
            self.history.append((self.time, *self.scraped))
            self.next_scrape = self.time + self.cfg.scrape_s

    def seen_at(self, times: np.ndarray) -> np.ndarray:
        """(kv, waiting, running) of the last scrape at or before each time (zeros
        before the first)."""
        hist = np.array(self.history, np.float64).reshape(-1, 4)
        idx = np.searchsorted(hist[:, 0], times, side="right") - 1
        seen = hist[np.maximum(idx, 0), 1:]
        seen[idx < 0] = 0.0
        return seen

    def _free(self, r: int) -> None:
        self.running.remove(r)
        self.kv_used -= self.sim.kv_held[r]
        self.sim.kv_held[r] = 0

    def _preempt(self, r: int) -> None:
        sim = self.sim
        self._free(r)
        # recompute: the prompt and the tokens generated so far are prefilled again
        sim.need[r] = sim.prompt[r] + sim.generated[r]
        sim.cached[r] = 0
        sim.prefilled[r] = 0
        sim.preempted[r] += 1
        self.waiting.appendleft(r)

    def step(self, rng: np.random.Generator) -> None:
        """Run one engine step and advance the clock."""
        cfg, sim = self.cfg, self.sim
        budget = cfg.token_budget
        decoding, in_prefill = [], []
        for r in self.running:
            (decoding if sim.prefilled[r] >= sim.need[r] else in_prefill).append(r)
        # KV growth for this step's decode tokens; preempt the newest on shortage.
        while decoding and self.kv_used + len(decoding) > cfg.kv_capacity_tokens:
            victim = self.running[-1]
            self._preempt(victim)
            (decoding if victim in decoding else in_prefill).remove(victim)
        budget -= len(decoding)
        prefill_tokens = 0
        finished_prefill = []
        for r in in_prefill:
            if budget <= 0:
                break
            chunk = min(budget, sim.need[r] - sim.prefilled[r])
            sim.prefilled[r] += chunk
            prefill_tokens += chunk
            budget -= chunk
            if sim.prefilled[r] >= sim.need[r]:
                finished_prefill.append(r)
        # admit waiting requests while budget, batch size and KV allow
        while budget > 0 and self.waiting and len(self.running) < cfg.max_running:
            r = self.waiting[0]
            if self.mode != "decode":
                sim.admit_prefix(r, self)
            footprint = sim.need[r] + sim.cached[r]
            if self.kv_used + footprint > cfg.kv_capacity_tokens * 0.98 and self.running:
                break
            self.waiting.popleft()
            self.running.append(r)
            self.kv_used += footprint
            sim.kv_held[r] = footprint
            chunk = min(budget, sim.need[r])
            sim.prefilled[r] = chunk
            prefill_tokens += chunk
            budget -= chunk
            if chunk >= sim.need[r] and sim.need[r] > 0:
                finished_prefill.append(r)
            elif sim.need[r] == 0:
                decoding.append(r)
                budget -= 1
        n_dec = len(decoding)
        ms = (
            cfg.base_ms
            + cfg.per_seq_ms * len(self.running)
            + cfg.per_prefill_token_ms * prefill_tokens
            + cfg.kv_attention_ms * self.kv_fraction() * (n_dec > 0)
        )
        ms *= np.exp(cfg.jitter * rng.standard_normal())
        u = rng.random()
        if u < cfg.slow_step_p:
            ms *= rng.uniform(2.0, 6.0)
        elif u < cfg.slow_step_p + cfg.stall_p:
            ms += rng.uniform(500.0, 5000.0)
        self.time += ms / 1000.0
        now = self.time
        for r in decoding:
            sim.generated[r] += 1
            sim.kv_held[r] += 1
        self.kv_used += n_dec
        for r in finished_prefill:
            if sim.generated[r] == 0:
                sim.generated[r] = 1  # the prefill step emits the first token
                sim.on_first_token(r, now)
                if self.mode == "prefill":
                    self._free(r)
        for r in [r for r in self.running if sim.generated[r] >= sim.output[r]]:
            self._free(r)
            sim.on_finish(r, now)


class _Simulation:
    def __init__(self, regime: Regime, n_requests: int, rng: np.random.Generator) -> None:
        w, cfg = regime.workload, regime.server
        self.regime, self.rng, self.n = regime, rng, n_requests
        self.arrival = _arrival_times(w, n_requests, rng)
        self.prompt = _mixture(w.prompt_classes, n_requests, rng).astype(np.int64)
        self.output = np.maximum(_mixture(w.output_classes, n_requests, rng), 2).astype(np.int64)
        has_prefix = rng.random(n_requests) < w.prefix_share
        self.prefix_group = np.where(has_prefix, rng.integers(0, w.prefix_groups, n_requests), -1)
        lo, hi = w.prefix_fraction
        group_fraction = rng.uniform(lo, hi, w.prefix_groups)
        self.prefix_len = np.where(
            has_prefix, np.floor(self.prompt * group_fraction[self.prefix_group]), 0
        ).astype(np.int64)
        self.prefix_last_used = np.full(w.prefix_groups, -np.inf)
        self.uncached_prompt = self.prompt.copy()
        self.need = self.prompt.copy()  # tokens to prefill (uncached prompt, + generated)
        self.cached = np.zeros(n_requests, np.int64)  # prompt tokens served by the cache
        self.kv_held = np.zeros(n_requests, np.int64)
        self.prefilled = np.zeros(n_requests, np.int64)
        self.generated = np.zeros(n_requests, np.int64)
        self.preempted = np.zeros(n_requests, np.int64)
        self.first_token = np.full(n_requests, np.nan)
        self.finished = np.full(n_requests, np.nan)
        self.decode_start = np.full(n_requests, np.nan)
        self.features = np.zeros((n_requests, 5))  # kv, prompt, waiting, running, prefill tif
        self.tpot_features = np.zeros((n_requests, 5))
        self.score_at_arrival = np.zeros(n_requests)
        self.gave_up = np.zeros(n_requests, bool)
        self.overhead = cfg.overhead_ms * np.exp(0.3 * rng.standard_normal(n_requests))
        self.router_prefill = 0  # uncached prompt tokens dispatched, no first token yet

    def _cache_ttl(self, engine: _Engine) -> float:
        return self.regime.workload.prefix_ttl_s * max(1.0 - engine.kv_fraction(), 0.02) ** 2

    def admit_prefix(self, r: int, engine: _Engine) -> None:
        """Prefix-cache hit decided at admission (the prefix may be evicted meanwhile)."""
        g = self.prefix_group[r]
        if g < 0 or self.preempted[r] > 0 or self.cached[r] > 0:
            return
        if engine.time - self.prefix_last_used[g] <= self._cache_ttl(engine):
            self.cached[r] = self.prefix_len[r]
            self.need[r] = self.prompt[r] - self.prefix_len[r]
        self.prefix_last_used[g] = engine.time

    def on_first_token(self, r: int, now: float) -> None:
        self.first_token[r] = now
        self.router_prefill -= self.uncached_prompt[r]

    def on_finish(self, r: int, now: float) -> None:
        self.finished[r] = now

    def _arrive(self, r: int, engine: _Engine) -> None:
        engine.scrape()
        kv, waiting, running = engine.scraped
        g = self.prefix_group[r]
        score = 0.0
        if g >= 0 and self.arrival[r] - self.prefix_last_used[g] <= self._cache_ttl(engine):
            score = float(self.prefix_len[r] / self.prompt[r])
        self.uncached_prompt[r] = int(self.prompt[r] * (1.0 - score))
        in_flight = int(np.ceil(self.router_prefill / 64.0) * 64)
        self.router_prefill += self.uncached_prompt[r]
        self.features[r] = (kv, self.prompt[r], waiting, running, in_flight)
        self.score_at_arrival[r] = score
        engine.waiting.append(r)

    def _arrive_decode(self, r: int, engine: _Engine) -> None:
        engine.scrape()
        self.need[r] = 0  # the KV cache arrives with the request
        self.cached[r] = self.prompt[r]
        self.prefilled[r] = 0
        self.decode_start[r] = engine.time
        engine.waiting.append(r)

    def _drop_timeouts(self, engine: _Engine, timeout: float) -> None:
        # Clients waiting longer than ``timeout`` for their first token give up.
        while engine.waiting:
            r = engine.waiting[0]
            if self.preempted[r] or engine.time - self.arrival[r] <= timeout:
                break
            engine.waiting.popleft()
            self.gave_up[r] = True
            self.router_prefill -= self.uncached_prompt[r]

    def _run_engine(self, engine: _Engine, times: np.ndarray, order: np.ndarray, arrive) -> None:
        timeout = self.regime.workload.timeout_s if engine.mode != "decode" else 0.0
        i, n = 0, order.shape[0]
        while True:
            while i < n and times[order[i]] <= engine.time:
                arrive(int(order[i]), engine)
                i += 1
            if timeout > 0:
                self._drop_timeouts(engine, timeout)
            if not (engine.running or engine.waiting):
                if i >= n:
                    return
                engine.time = float(times[order[i]])
                continue
            engine.scrape()
            engine.step(self.rng)

    def run(self) -> None:
        order = np.arange(self.n)
        if not self.regime.disaggregated:
            self._run_engine(
                _Engine(self.regime.server, self, "both"), self.arrival, order, self._arrive
            )
            return
        # P/D: the prefill pod first (it does not depend on the decode pod), then the
        # decode pod with the KV transfers as arrivals.
        self._run_engine(
            _Engine(self.regime.server, self, "prefill"), self.arrival, order, self._arrive
        )
        started = ~np.isnan(self.first_token)
        transfer = self.first_token + 0.02 + self.prompt * 2e-6
        order = np.flatnonzero(started)[np.argsort(transfer[started], kind="stable")]
        self.generated[:] = np.where(started, 1, 0)
        decode = _Engine(self.regime.server, self, "decode")
        self._run_engine(decode, transfer, order, self._arrive_decode)
        # The router picked the decode pod when the request arrived, before its prefill.
        seen = decode.seen_at(self.arrival)
        self.tpot_features[:, 0] = seen[:, 0]
        self.tpot_features[:, 1] = self.prompt
        self.tpot_features[:, 2:4] = seen[:, 1:]
        self.tpot_features[:, 4] = 0.0


def simulate(regime: str | Regime, rows: int, seed: int = 0) -> Columns:
    """A trace of about ``rows`` observations (TTFT and TPOT rows interleaved in the
    order they would be recorded), as validated columns like :func:`load_trace`."""
    spec = REGIMES[regime] if isinstance(regime, str) else regime
    if isinstance(regime, str) and regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {REGIME_NAMES}")
    rng = np.random.default_rng(seed)
    warm = spec.workload.warmup
    n_requests = int(np.ceil(rows / 2 / (1.0 - warm) * 1.12)) + 20
    sim = _Simulation(spec, n_requests, rng)
    sim.run()
    return _records(sim, rows, warm)


def _records(sim: _Simulation, rows: int, warm: float) -> Columns:
    n = sim.n
    keep = np.arange(n) >= int(warm * n)
    ok = keep & ~sim.gave_up & ~np.isnan(sim.first_token)
    ttft_ms = (sim.first_token - sim.arrival) * 1000.0 + sim.overhead
    done = ok & ~np.isnan(sim.finished) & (sim.output > 1)
    start = np.where(np.isnan(sim.decode_start), sim.first_token, sim.decode_start)
    tpot_ms = (sim.finished - start) * 1000.0 / np.maximum(sim.output - 1, 1)
    ids_t = np.flatnonzero(ok)
    ids_p = np.flatnonzero(done)
    when = np.concatenate([sim.first_token[ids_t], sim.finished[ids_p]])
    order = np.argsort(when, kind="stable")
    ids = np.concatenate([ids_t, ids_p])[order][:rows]
    is_ttft = (np.arange(ids_t.size + ids_p.size) < ids_t.size)[order][:rows]
    disagg = sim.regime.disaggregated
    feats = np.where(is_ttft[:, None] | (not disagg), sim.features[ids], sim.tpot_features[ids])
    m = ids.size
    zeros = np.zeros(m)
    pod = np.where(is_ttft, 1.0, 2.0) if disagg else zeros.copy()
    return {
        "kv_cache_percentage": np.round(feats[:, 0], 6),
        "input_token_length": feats[:, 1].astype(np.float64),
        "num_request_waiting": feats[:, 2].astype(np.float64),
        "num_request_running": feats[:, 3].astype(np.float64),
        "num_tokens_generated": zeros.copy(),
        "prefix_cache_score": np.round(sim.score_at_arrival[ids], 6),
        "prefill_tokens_in_flight": feats[:, 4].astype(np.float64),
        # the recorder of the real traces leaves this at 0
        "decode_tokens_in_flight": zeros.copy(),
        "encoder_matched_size": zeros.copy(),
        "encoder_input_size": zeros.copy(),
        "pod_type": pod,
        "actual_ttft_ms": np.where(is_ttft, np.round(ttft_ms[ids]), 0.0),
        "actual_tpot_ms": np.where(is_ttft, 0.0, tpot_ms[ids]),
    }


def to_trace_records(cols: Columns) -> list[dict]:
    """Rows with exactly the dataset's fields (integers as integers)."""
    lists = {
        k: (cols[k].astype(np.int64) if k in INTEGER_FIELDS else cols[k]).tolist()
        for k in TRACE_FIELDS
    }
    n = len(lists[TRACE_FIELDS[0]])
    out = []
    for i in range(n):
        row = {k: lists[k][i] for k in TRACE_FIELDS}
        row["actual_ttft_ms"] = int(row["actual_ttft_ms"])
        out.append(row)
    return out


def write_trace(cols: Columns, path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in to_trace_records(cols)))


def with_server(regime: str, **changes) -> Regime:
    """A named regime with some server settings changed (e.g. a smaller KV cache)."""
    spec = REGIMES[regime]
    return replace(spec, server=replace(spec.server, **changes))
