"""Entry point of the test image: wait for the services (bounded), then run a suite.

    python scripts/suite_job.py functional   # tests/serve + tests/latency/test_http_api.py
    python scripts/suite_job.py stress       # headless Locust with enforced thresholds

The in-cluster test Jobs run exactly this, and so does tests/k8s against a local
stack, so the Job's command is exercised in CI. Targets come from the same variables
the suites read:

    SLOCAST_URL                      LTE prediction server (tests/serve, ForecastUser)
    SLOCAST_LATENCY_TRAINING_URL     latency training server (tests/latency)
    SLOCAST_LATENCY_PREDICTION_URL   latency prediction server (tests/latency, RouterUser)

Every variable a suite needs must be set: a missing one is an error, never a skip.
``--only serve|latency`` narrows a run to one workload. Waiting is bounded by
``SLOCAST_WAIT_TIMEOUT_SECONDS`` (default 600); on timeout the job exits 3 and says
which URL it waited for and the last answer it got. Exit codes: the suite's own, 2
for bad configuration, 3 for a wait timeout.

The stress run first makes sure the latency predictor has a model: when it is not
ready, it posts synthetic samples (slocast.latency.synthetic) to the training server
and waits for the predictor. The LTE server needs a champion from the pipeline (the
seed-lte-dataset Job in the cluster, ``slocast run``/``slocast submit`` locally).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

APP = Path(__file__).resolve().parents[1]
# The black-box HTTP suites (they read the URLs above); the other modules under
# tests/latency are unit tests of the library and need no deployment.
FUNCTIONAL_SUITES = {"serve": ["tests/serve"], "latency": ["tests/latency/test_http_api.py"]}

SERVE_URL = "SLOCAST_URL"
TRAINING_URL = "SLOCAST_LATENCY_TRAINING_URL"
PREDICTION_URL = "SLOCAST_LATENCY_PREDICTION_URL"


class WaitTimeout(Exception):
    pass


def probe(url: str, timeout: float = 3.0) -> tuple[int | None, str]:
    """(status, short body or error) of one GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) URL from config
            return response.status, response.read(200).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(200).decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def wait_for(url: str, deadline: float, what: str) -> None:
    """Poll ``url`` until it answers 200; raise WaitTimeout with the last answer."""
    started = time.monotonic()
    last_report = started
    status, detail = None, "no answer yet"
    print(f"waiting for {what}: {url}", flush=True)
    while True:
        status, detail = probe(url)
        if status == 200:
            print(f"  ready after {time.monotonic() - started:.0f} s", flush=True)
            return
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(
                f"timed out after {now - started:.0f} s waiting for {what} at {url}; "
                f"last answer: {status if status is not None else 'no connection'} {detail.strip()[:200]}"
            )
        if now - last_report >= 30:
            print(
                f"  still waiting ({now - started:.0f} s): {status} {detail.strip()[:120]}",
                flush=True,
            )
            last_report = now
        time.sleep(max(0.1, min(2.0, deadline - time.monotonic())))


def require(names: list[str]) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        print(f"suite_job: missing environment variable(s): {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    return {n: os.environ[n].rstrip("/") for n in names}


def post_json(url: str, body: dict, token: str | None = None, timeout: float = 30.0) -> int:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def seed_latency_model(training_url: str, samples: int = 4000) -> None:
    """Post synthetic samples so the training server has something to train on."""
    from slocast.latency.synthetic import generate, to_records

    records = to_records(generate("sharegpt-like", samples, seed=1))
    for start in range(0, len(records), 1000):
        status = post_json(
            f"{training_url}/add_training_data_bulk", {"entries": records[start : start + 1000]}
        )
        if status != 202:
            raise SystemExit(f"suite_job: seeding latency samples got HTTP {status}")
    print(f"posted {len(records)} synthetic latency samples to {training_url}", flush=True)


def functional(workloads: list[str], deadline: float, extra: list[str]) -> int:
    paths = []
    if "serve" in workloads:
        urls = require([SERVE_URL])
        wait_for(f"{urls[SERVE_URL]}/readyz", deadline, "LTE prediction server (champion loaded)")
        paths += FUNCTIONAL_SUITES["serve"]
    if "latency" in workloads:
        urls = require([TRAINING_URL, PREDICTION_URL])
        wait_for(f"{urls[TRAINING_URL]}/readyz", deadline, "latency training server")
        # The latency suite trains its own models (flush + samples): alive is enough.
        wait_for(f"{urls[PREDICTION_URL]}/healthz", deadline, "latency prediction server")
        paths += FUNCTIONAL_SUITES["latency"]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *paths, *extra]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command, cwd=APP)


def stress(workloads: list[str], deadline: float, extra: list[str]) -> int:
    user_classes = []
    if "serve" in workloads:
        urls = require([SERVE_URL])
        wait_for(f"{urls[SERVE_URL]}/readyz", deadline, "LTE prediction server (champion loaded)")
        user_classes.append("ForecastUser")
    if "latency" in workloads:
        urls = require([TRAINING_URL, PREDICTION_URL])
        status, _ = probe(f"{urls[PREDICTION_URL]}/readyz")
        if status != 200:
            wait_for(f"{urls[TRAINING_URL]}/readyz", deadline, "latency training server")
            seed_latency_model(urls[TRAINING_URL])
        wait_for(
            f"{urls[PREDICTION_URL]}/readyz", deadline, "latency prediction server (model loaded)"
        )
        user_classes.append("RouterUser")
    csv_prefix = os.environ.get("SLOCAST_STRESS_CSV", "/tmp/stress")
    command = [
        "locust",
        "--locustfile",
        str(APP / "loadtest" / "locustfile.py"),
        "--headless",
        "--users",
        os.environ.get("SLOCAST_STRESS_USERS", "20"),
        "--spawn-rate",
        os.environ.get("SLOCAST_STRESS_SPAWN_RATE", "5"),
        "--run-time",
        os.environ.get("SLOCAST_STRESS_DURATION", "60s"),
        "--stop-timeout",
        "10",
        "--csv",
        csv_prefix,
        "--only-summary",
        *extra,
        *user_classes,
    ]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command, cwd=APP)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after "--" goes to pytest / locust unchanged.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="arguments after -- go to pytest / locust"
    )
    parser.add_argument("suite", choices=("functional", "stress"))
    parser.add_argument(
        "--only", choices=("serve", "latency"), help="run one workload instead of both"
    )
    args = parser.parse_args(own)
    workloads = [args.only] if args.only else ["serve", "latency"]
    try:
        timeout = float(os.environ.get("SLOCAST_WAIT_TIMEOUT_SECONDS", "600"))
    except ValueError:
        print("suite_job: SLOCAST_WAIT_TIMEOUT_SECONDS must be a number", file=sys.stderr)
        return 2
    deadline = time.monotonic() + timeout
    try:
        if args.suite == "functional":
            return functional(workloads, deadline, extra)
        return stress(workloads, deadline, extra)
    except WaitTimeout as exc:
        print(f"suite_job: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
