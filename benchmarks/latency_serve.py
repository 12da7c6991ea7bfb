"""Serving benchmark of the latency prediction server with wrk (a C load generator).

Builds a model bundle from a trace (default: synthetic extreme-contention samples,
or ``--data`` JSONL), starts ``slocast latency-predictor`` on a free 127.0.0.1 port
and drives ``/predict`` and ``/predict/bulk/strict`` with 10, 100 and 1000
candidates, closed loop:

- latency run: 1 connection (each request waits for the previous): p50/p99;
- throughput run: ``--connections`` connections: requests/s and rows/s.

Targets (issue 6): ``/predict`` p50 < 1 ms; 1000-candidate bulk p50 < 4 ms.
The machine's 1-minute load average is recorded before every case: on a shared
machine, compare runs only against a reference measured in the same session.
Needs ``wrk`` (``apt-get install -y wrk``). Usage:

    python benchmarks/latency_serve.py [--duration 10] [--workers 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from slocast.latency.bundle import publish, write_bundle
from slocast.latency.features import build_features, regimes
from slocast.latency.model import TARGET_COLUMNS, TARGET_PARAMS, TARGETS, fit_target_model
from slocast.latency.synthetic import generate, to_records
from slocast.latency.trace import load_trace
from slocast.latency.trainer import MODEL_INFO

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("SLOCAST_BODY_FILE"), "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"socket_errors\": %d, \"non_2xx\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def build_bundle(model_dir: Path, data: Path | None) -> None:
    cols = load_trace(data) if data else generate("extreme-contention", 20_000, seed=0)
    x, regime_ids = build_features(cols), regimes(cols)
    models = {}
    for target in TARGETS:
        y = cols[TARGET_COLUMNS[target]]
        rows = (y > 0).nonzero()[0]
        cut = int(0.8 * rows.shape[0])
        fit, cal = rows[:cut], rows[cut:]
        models[target] = fit_target_model(
            target,
            x[fit],
            y[fit],
            x[cal],
            y[cal],
            regime_ids[cal],
            0.9,
            TARGET_PARAMS[target],
            seed=0,
        )
    info = {**MODEL_INFO, "quantile": 0.9, "created_at": "benchmark"}
    publish(
        model_dir, write_bundle(model_dir, models, info, compile_cache=model_dir / ".compile-cache")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_wrk(url: str, body: bytes, connections: int, duration: int, tmp: Path) -> dict:
    body_file = tmp / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        env={**os.environ, "SLOCAST_BODY_FILE": str(body_file)},
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="JSONL trace to train the served model on")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--connections", type=int, default=4, help="throughput run connections")
    parser.add_argument("--json", type=Path, help="write results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="slocast-serve-bench-"))
    model_dir = tmp / "models"
    build_bundle(model_dir, args.data)
    port = free_port()
    env = {
        **os.environ,
        "SLOCAST_LATENCY_MODEL_DIR": str(model_dir),
        "SLOCAST_LATENCY_PREDICTION_PORT": str(port),
        "SLOCAST_LATENCY_HOST": "127.0.0.1",
        "SLOCAST_LATENCY_WORKERS": str(args.workers),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "slocast.cli", "latency-predictor"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
    )
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("prediction server did not become ready")
        status = httpx.get(f"{base}/status").json()
        print(
            f"serving {status['model_version']} engines {status['engines']} "
            f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
        )
        candidates = to_records(generate("extreme-contention", 1000, seed=1))
        for item in candidates:
            item.pop("actual_ttft_ms")
            item.pop("actual_tpot_ms")
        cases = [("/predict", 1, orjson.dumps(candidates[0]))] + [
            ("/predict/bulk/strict", n, orjson.dumps({"requests": candidates[:n]}))
            for n in (10, 100, 1000)
        ]
        print(
            f"{'endpoint':22s} {'rows':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>9s} "
            f"{'rows/s':>10s} {'load':>5s}"
        )
        for path, rows, body in cases:
            load_average = os.getloadavg()[0]
            latency = run_wrk(base + path, body, 1, args.duration, tmp)
            load = run_wrk(base + path, body, args.connections, args.duration, tmp)
            rps = load["requests"] / (load["duration_us"] / 1e6)
            result = {
                "endpoint": path,
                "rows": rows,
                "p50_ms": latency["p50_us"] / 1000,
                "p99_ms": latency["p99_us"] / 1000,
                "requests_per_s": rps,
                "rows_per_s": rps * rows,
                "loaded_p50_ms": load["p50_us"] / 1000,
                "loaded_p99_ms": load["p99_us"] / 1000,
                "load_average": load_average,
                "errors": latency["socket_errors"]
                + latency["non_2xx"]
                + load["socket_errors"]
                + load["non_2xx"],
            }
            results.append(result)
            print(
                f"{path:22s} {rows:5d} {result['p50_ms']:8.3f} {result['p99_ms']:8.3f} "
                f"{rps:9.0f} {result['rows_per_s']:10.0f} {load_average:5.2f}"
                + (f"  ERRORS {result['errors']}" if result["errors"] else "")
            )
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "workers": args.workers,
                    "cpus": os.cpu_count(),
                    "engines": status["engines"],
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
