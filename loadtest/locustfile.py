"""Locust load profiles for slocast's two HTTP APIs.

User classes (pick on the command line or in the swarm UI):

- ``ForecastUser``: the LTE forecast API (``SLOCAST_URL``). Mostly single
  ``POST /v1/forecast`` calls with a 12-row history (``time`` + the 11 LTE columns),
  some ``POST /v1/forecast/batch`` calls with 10 series. Histories are windows of
  :func:`slocast.core.synthetic.generate_lte`, so values and the 2-minute grid look
  like the real cells.
- ``RouterUser``: an LLM router calling the latency prediction server
  (``SLOCAST_LATENCY_PREDICTION_URL``) with ``POST /predict/bulk/strict`` and 10-100
  candidate pods per call, drawn from :mod:`slocast.latency.synthetic` workloads.

Each response is checked (status and the number of answers), not just counted.

Thresholds are enforced when Locust exits (headless runs: the stress Job, the CI
smoke test): the process exits 1 when the failure ratio exceeds
``--max-fail-ratio`` (env ``LOCUST_MAX_FAIL_RATIO``, default 0.01), the overall p99
exceeds ``--max-p99-ms`` (``LOCUST_MAX_P99_MS``, default 500) or fewer than
``--min-requests`` (``LOCUST_MIN_REQUESTS``, default 1) requests completed.

    SLOCAST_URL=http://127.0.0.1:8000 locust -f loadtest/locustfile.py --headless \\
        -u 8 -r 4 -t 20s ForecastUser
"""

from __future__ import annotations

import logging
import os
import random

import gevent
import numpy as np
from locust import FastHttpUser, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN
from slocast.core.synthetic import generate_lte
from slocast.latency.synthetic import WORKLOADS, generate, to_records

log = logging.getLogger("slocast.loadtest")

HISTORY_ROWS = 12
BATCH_SERIES = 10
CANDIDATES = (10, 100)
POOL = 256  # distinct payloads per user class


@events.init_command_line_parser.add_listener
def _thresholds(parser) -> None:
    parser.add_argument(
        "--max-fail-ratio",
        type=float,
        default=0.01,
        env_var="LOCUST_MAX_FAIL_RATIO",
        help="exit 1 when the share of failed requests is above this (default 0.01)",
    )
    parser.add_argument(
        "--max-p99-ms",
        type=float,
        default=500.0,
        env_var="LOCUST_MAX_P99_MS",
        help="exit 1 when the p99 response time over all requests is above this (default 500)",
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        default=1,
        env_var="LOCUST_MIN_REQUESTS",
        help="exit 1 when fewer requests completed (a run that sent nothing passes nothing)",
    )


def threshold_violations(environment) -> list[str]:
    """What the finished run broke, as readable sentences (empty = passed)."""
    total = environment.stats.total
    options = environment.parsed_options
    problems = []
    if total.num_requests < options.min_requests:
        problems.append(f"{total.num_requests} requests < minimum {options.min_requests}")
    if total.fail_ratio > options.max_fail_ratio:
        problems.append(
            f"failure ratio {total.fail_ratio:.4f} > {options.max_fail_ratio} "
            f"({total.num_failures} of {total.num_requests})"
        )
    if total.num_requests:
        p99 = total.get_response_time_percentile(0.99)
        if p99 > options.max_p99_ms:
            problems.append(f"p99 {p99:.0f} ms > {options.max_p99_ms:.0f} ms")
    return problems


@events.quitting.add_listener
def _enforce_thresholds(environment, **_kwargs) -> None:
    if environment.parsed_options is None or environment.runner is None:
        return
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) judges the whole run
    total = environment.stats.total
    problems = threshold_violations(environment)
    summary = (
        f"requests {total.num_requests}, failures {total.num_failures}, "
        f"p50 {total.get_response_time_percentile(0.5) or 0:.0f} ms, "
        f"p99 {total.get_response_time_percentile(0.99) or 0:.0f} ms, "
        f"{total.total_rps:.0f} req/s"
    )
    if problems:
        log.error("thresholds FAILED: %s (%s)", "; ".join(problems), summary)
        environment.process_exit_code = 1
    else:
        log.info("thresholds passed (%s)", summary)


def forecast_histories(count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` histories of HISTORY_ROWS consecutive synthetic LTE rows."""
    frame = generate_lte(count + HISTORY_ROWS + 1, seed=seed, nan_cells=0)
    times = frame[TIME_COLUMN].dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    values = frame[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
    rows = [
        {"time": t, **dict(zip(FEATURE_COLUMNS, map(float, v), strict=True))}
        for t, v in zip(times, values, strict=True)
    ]
    return [rows[i : i + HISTORY_ROWS] for i in range(count)]


def router_requests(count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` candidate lists of 10-100 pods, features only (no actuals)."""
    rng = np.random.default_rng(seed)
    records = []
    for i, workload in enumerate(WORKLOADS):
        records += to_records(generate(workload, 2000, seed=seed + i))
    for record in records:
        record.pop("actual_ttft_ms", None)
        record.pop("actual_tpot_ms", None)
    out = []
    for _ in range(count):
        size = int(rng.integers(CANDIDATES[0], CANDIDATES[1] + 1))
        picks = rng.choice(len(records), size=size, replace=False)
        out.append([records[j] for j in picks])
    return out


class ForecastUser(FastHttpUser):
    """Capacity engineers' dashboards and autoscalers asking for the next step."""

    host = os.environ.get("SLOCAST_URL")
    wait_time = constant(0)  # closed loop: the server's latency paces the user
    histories: list[list[dict]] = []

    @task(9)
    def forecast(self) -> None:
        body = {"history": random.choice(self.histories), "horizon": 1, "quantiles": [0.9]}
        with self.client.post(
            "/v1/forecast", json=body, name="/v1/forecast", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json().get("forecasts", [])) != 1:
                response.failure("expected one forecast step")

    @task(1)
    def forecast_batch(self) -> None:
        series = [
            {"id": f"cell-{i}", "history": h}
            for i, h in enumerate(random.sample(self.histories, BATCH_SERIES))
        ]
        body = {"series": series, "horizon": 1, "quantiles": [0.9]}
        with self.client.post(
            "/v1/forecast/batch", json=body, name="/v1/forecast/batch", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json().get("results", [])) != BATCH_SERIES:
                response.failure(f"expected {BATCH_SERIES} series")


class RouterUser(FastHttpUser):
    """An llm-d style router scoring every candidate pod before each request."""

    host = os.environ.get("SLOCAST_LATENCY_PREDICTION_URL")
    wait_time = constant(0)
    requests_pool: list[list[dict]] = []

    @task
    def bulk_strict(self) -> None:
        candidates = random.choice(self.requests_pool)
        with self.client.post(
            "/predict/bulk/strict",
            json={"requests": candidates},
            name="/predict/bulk/strict",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            predictions = response.json().get("predictions", [])
            if len(predictions) != len(candidates):
                response.failure(f"{len(predictions)} predictions for {len(candidates)} candidates")


@events.init.add_listener
def _build_payloads(environment, **_kwargs) -> None:
    """Payload pools are built once per load-generating process, before users spawn
    (the first synthetic generation takes seconds and would otherwise eat the run)."""
    if isinstance(environment.runner, MasterRunner):
        return
    if ForecastUser.host:
        ForecastUser.histories = forecast_histories(POOL)
    if RouterUser.host:
        RouterUser.requests_pool = router_requests(POOL)
    # The event loop's cached clock stood still while this blocked: refresh it, or
    # the --run-time timer started next would count the build against the run.
    gevent.get_hub().loop.update_now()
