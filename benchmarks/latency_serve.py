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
Needs ``wrk`` (``apt-get install -y wrk``).

``--upstream PATH`` (a checkout of the llm-d latency predictor) measures the
upstream servers side by side in the same run: a separate venv with the
upstream's ``requirements.txt`` (cached under ``~/.cache/slocast``, keyed by the
file's hash), its training server fed the same samples through
``/add_training_data_bulk`` (upstream deploy config: XGBoost, quantile 0.9,
retraining every second), then restarted on the trained model files (so that
retraining does not share the cores during the measurement, as on its own pod),
and its prediction server (``uvicorn prediction.prediction_server:app``, the same
number of workers) synced from it. Each case then runs against slocast and the
upstream in turn, with the same request bodies (both accept them), and a table of
ratios is printed and written to ``--json``. Floors (issue): slocast ``/predict``
req/s >= 20x the upstream's; slocast 1000-candidate bulk p50 <= 5 ms. Usage:

    python benchmarks/latency_serve.py [--duration 10] [--workers 2] [--json OUT]
        [--upstream /path/to/llm-d-latency-predictor]
"""

from __future__ import annotations

import argparse
import hashlib
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

# The upstream's deploy config (deploy/base/*/configmap.yaml) and code defaults.
UPSTREAM_TRAINING_ENV = {
    "LATENCY_MODEL_TYPE": "xgboost",
    "LATENCY_OBJECTIVE_TYPE": "quantile",
    "LATENCY_QUANTILE_ALPHA": "0.9",
    "LATENCY_RETRAINING_INTERVAL_SEC": "1",
    "LATENCY_MIN_SAMPLES_FOR_RETRAIN": "100",
}
UPSTREAM_PREDICTION_ENV = {
    "LATENCY_MODEL_TYPE": "xgboost",
    "LATENCY_OBJECTIVE_TYPE": "quantile",
    "LATENCY_QUANTILE_ALPHA": "0.9",
    "MODEL_SYNC_INTERVAL_SEC": "10",
    "HTTP_TIMEOUT": "30",
}
UPSTREAM_MODELS = ("ttft", "tpot", "ttft_scaler", "tpot_scaler", "ttft_gated", "tpot_gated")
# _create_default_model fits one point with target 10.0: a server still on it
# answers 10.0 for everything.
UPSTREAM_DEFAULT_PREDICTION = 10.0


def build_bundle(model_dir: Path, cols) -> None:
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
    publish(model_dir, write_bundle(model_dir, models, info))


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


def measure(base: str, path: str, rows: int, body: bytes, args, tmp: Path) -> dict:
    load_average = os.getloadavg()[0]
    latency = run_wrk(base + path, body, 1, args.duration, tmp)
    load = run_wrk(base + path, body, args.connections, args.duration, tmp)
    rps = load["requests"] / (load["duration_us"] / 1e6)
    return {
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


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log=None):
    """Poll ``check()`` until it returns a truthy value (HTTP errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log else ""
    raise RuntimeError(f"{what}: timed out after {timeout:.0f} s\n{tail}")


def stop(proc: subprocess.Popen | None, timeout: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# Runs the upstream training server (uvicorn, as its Dockerfile does). Some upstream
# revisions define ``_drop_timestamp`` at module level but call
# ``self._drop_timestamp`` in ``train()``: every retrain then fails and the server keeps
# its default model. The function is bound onto the class here, at run time, only
# when the class lacks it; no upstream file is changed.
UPSTREAM_TRAINING_SHIM = """
import sys
import uvicorn
import training.training_server as t
if not hasattr(t.LatencyPredictor, "_drop_timestamp") and hasattr(t, "_drop_timestamp"):
    f = t._drop_timestamp
    t.LatencyPredictor._drop_timestamp = f if isinstance(f, staticmethod) else staticmethod(f)
    print("slocast benchmark: bound _drop_timestamp onto LatencyPredictor", file=sys.stderr)
uvicorn.run(t.app, host="127.0.0.1", port=int(sys.argv[1]))
"""


def model_paths(prefix: str, directory: Path) -> dict[str, str]:
    """The upstream's model path variables (LATENCY_TTFT_MODEL_PATH, LOCAL_TTFT_SCALER_PATH...)."""
    return {
        f"{prefix}{m.upper()}{'' if 'scaler' in m else '_MODEL'}_PATH": str(
            directory / f"{m}.joblib"
        )
        for m in UPSTREAM_MODELS
    }


def upstream_venv(checkout: Path) -> Path:
    """Python of a venv holding the upstream's requirements (created once, then reused)."""
    requirements = checkout / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slocast"
    venv = cache / f"upstream-venv-{key}"
    python = venv / "bin" / "python"
    marker = venv / ".slocast-installed"
    if marker.exists():
        print(f"upstream venv {venv} (cached)")
        return python
    print(f"creating upstream venv {venv} (pip install -r {requirements})", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    # Created in place (a venv's scripts hold its absolute path, so it cannot be moved);
    # the marker is written last, so an interrupted install is redone.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
        check=True,
        timeout=1800,
    )
    marker.write_text(requirements.read_text())
    return python


class Upstream:
    """The upstream training and prediction servers, started beside slocast's."""

    def __init__(self, checkout: Path, tmp: Path, workers: int):
        self.checkout = checkout.resolve()
        self.tmp = tmp / "upstream"
        self.tmp.mkdir()
        self.workers = workers
        self.training: subprocess.Popen | None = None
        self.prediction: subprocess.Popen | None = None
        self.info: dict = {"path": str(self.checkout), "workers": workers}

    def _spawn(self, python: Path, module: str, port: int, env: dict, log: Path, extra=()):
        return subprocess.Popen(
            [str(python), "-m", "uvicorn", module, "--host", "127.0.0.1", "--port", str(port)]
            + list(extra),
            cwd=self.checkout,
            env={**os.environ, **env, "PYTHONPATH": str(self.checkout)},
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),  # noqa: SIM115 - lives as long as the server
        )

    def _start_training(self, python: Path, port: int, model_dir: Path, log: Path):
        env = {
            **UPSTREAM_TRAINING_ENV,
            **model_paths("LATENCY_", model_dir),
        }
        proc = subprocess.Popen(
            [str(python), "-c", UPSTREAM_TRAINING_SHIM, str(port)],
            cwd=self.checkout,
            env={**os.environ, **env, "PYTHONPATH": str(self.checkout)},
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),  # noqa: SIM115 - lives as long as the server
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200,
            300,
            "upstream training server readiness",
            proc,
            log,
        )
        return proc, base

    def start(self, records: list[dict], candidates: list[dict]) -> str:
        python = upstream_venv(self.checkout)
        self.info["requirements_sha256"] = hashlib.sha256(
            (self.checkout / "requirements.txt").read_bytes()
        ).hexdigest()
        self.info["python"] = str(python)
        train_models = self.tmp / "training-models"
        train_log = self.tmp / "training.log"
        port = free_port()
        # 1. Train: the deploy config retrains every second; wait for two retrains
        #    completed after the last sample was accepted (the second one started after
        #    it, so it saw every sample).
        t0 = time.monotonic()
        self.training, base = self._start_training(python, port, train_models, train_log)
        with httpx.Client(timeout=300) as client:
            for start in range(0, len(records), 2000):
                r = client.post(
                    f"{base}/add_training_data_bulk",
                    json={"entries": records[start : start + 2000]},
                )
                r.raise_for_status()
            seen = [client.get(f"{base}/data/status").json()["last_retrain"]]

            def retrained_twice():
                last = client.get(f"{base}/data/status").json()["last_retrain"]
                if last is not None and last != seen[-1]:
                    seen.append(last)
                return len(seen) >= 3

            wait_until(retrained_twice, 900, "upstream training", self.training, train_log)
            data_status = client.get(f"{base}/data/status").json()
        self.info["training"] = {
            "samples_posted": len(records),
            "training_samples": data_status["training_data"],
            "test_samples": data_status["test_data"],
            "ensemble_active": data_status["ensemble"]["ensemble_active"],
            "seconds": time.monotonic() - t0,
            "config": UPSTREAM_TRAINING_ENV,
            "drop_timestamp_bound_by_benchmark": "bound _drop_timestamp" in train_log.read_text(),
        }
        # 2. Restart the training server on the trained files: it loads them, holds no
        #    samples, so its loop has nothing to retrain during the measurement.
        stop(self.training)
        self.training, base = self._start_training(python, port, train_models, train_log)
        # 3. The prediction server, synced from it.
        local = self.tmp / "prediction-models"
        pred_port = free_port()
        pred_log = self.tmp / "prediction.log"
        env = {
            **UPSTREAM_PREDICTION_ENV,
            "TRAINING_SERVER_URL": base,
            "PREDICT_HOST": "127.0.0.1",
            "PREDICT_PORT": str(pred_port),
            **model_paths("LOCAL_", local),
        }
        self.prediction = self._spawn(
            python,
            "prediction.prediction_server:app",
            pred_port,
            env,
            pred_log,
            ["--workers", str(self.workers)],
        )
        pred = f"http://127.0.0.1:{pred_port}"
        # Every worker syncs and loads at start-up; /status answers from any of them,
        # so ask (on new connections) until 20 answers in a row are ready.
        streak = [0]

        def all_ready():
            status = httpx.get(f"{pred}/status", timeout=5).json()
            streak[0] = streak[0] + 1 if status["is_ready"] else 0
            return status if streak[0] >= 20 else None

        status = wait_until(all_ready, 300, "upstream prediction server", self.prediction, pred_log)
        answer = httpx.post(
            f"{pred}/predict/bulk/strict", json={"requests": candidates[:100]}, timeout=30
        )
        answer.raise_for_status()
        values = {
            round(p[k], 6) for p in answer.json()["predictions"] for k in ("ttft_ms", "tpot_ms")
        }
        if values <= {UPSTREAM_DEFAULT_PREDICTION, 0.0} or len(values) < 3:
            raise RuntimeError(f"upstream prediction server still serves a default model: {values}")
        self.info["prediction"] = {
            "model_type": status["model_type"],
            "objective_type": status["objective_type"],
            "quantile": status["quantile"],
            "ensemble_active": status["ensemble_active"],
            "config": UPSTREAM_PREDICTION_ENV,
        }
        print(
            f"upstream {status['model_type']} {status['objective_type']} {status['quantile']} "
            f"ensemble {status['ensemble_active']}, trained on "
            f"{data_status['training_data']} in {self.info['training']['seconds']:.0f} s"
        )
        return pred

    def close(self) -> None:
        stop(self.prediction)
        stop(self.training)


def fmt(result: dict) -> str:
    return (
        f"{result['p50_ms']:8.3f} {result['p99_ms']:8.3f} {result['requests_per_s']:9.0f} "
        f"{result['rows_per_s']:10.0f} {result['load_average']:5.2f}"
        + (f"  ERRORS {result['errors']}" if result["errors"] else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="JSONL trace to train the served model on")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--connections", type=int, default=4, help="throughput run connections")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument(
        "--upstream",
        type=Path,
        metavar="PATH",
        help="checkout of the llm-d latency predictor: measure it side by side",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.upstream and not (args.upstream / "prediction" / "prediction_server.py").is_file():
        print(f"{args.upstream}: not an llm-d latency predictor checkout", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="slocast-serve-bench-"))
    cols = load_trace(args.data) if args.data else generate("extreme-contention", 20_000, seed=0)
    candidates = to_records(generate("extreme-contention", 1000, seed=1))
    for item in candidates:
        item.pop("actual_ttft_ms")
        item.pop("actual_tpot_ms")
    cases = [("/predict", 1, orjson.dumps(candidates[0]))] + [
        ("/predict/bulk/strict", n, orjson.dumps({"requests": candidates[:n]}))
        for n in (10, 100, 1000)
    ]
    upstream = Upstream(args.upstream, tmp, args.workers) if args.upstream else None
    server = None
    results, upstream_results = [], []
    try:
        # The upstream first: its venv and training burn CPU, done before any measurement.
        upstream_base = upstream.start(to_records(cols), candidates) if upstream else None
        model_dir = tmp / "models"
        build_bundle(model_dir, cols)
        port = free_port()
        env = {
            **os.environ,
            "SLOCAST_LATENCY_MODEL_DIR": str(model_dir),
            "SLOCAST_LATENCY_PREDICTION_PORT": str(port),
            "SLOCAST_LATENCY_HOST": "127.0.0.1",
            "SLOCAST_LATENCY_WORKERS": str(args.workers),
        }
        log = tmp / "server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "slocast.cli", "latency-predictor"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - lives as long as the server
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=1).status_code == 200,
            120,
            "prediction server did not become ready",
            server,
            log,
        )
        status = httpx.get(f"{base}/status").json()
        print(
            f"serving {status['model_version']} engines {status['engines']} "
            f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
        )
        if upstream:
            for path, _, body in cases:  # each server accepts the same bodies: check
                for name, url in (("slocast", base), ("upstream", upstream_base)):
                    r = httpx.post(
                        url + path,
                        content=body,
                        headers={"Content-Type": "application/json"},
                        timeout=30,
                    )
                    if r.status_code != 200:
                        raise RuntimeError(f"{name} {path}: {r.status_code} {r.text[:300]}")
        print(
            f"{'server':8s} {'endpoint':22s} {'rows':>5s} {'p50 ms':>8s} {'p99 ms':>8s} "
            f"{'req/s':>9s} {'rows/s':>10s} {'load':>5s}"
        )
        for path, rows, body in cases:
            result = measure(base, path, rows, body, args, tmp)
            results.append(result)
            print(f"{'slocast':8s} {path:22s} {rows:5d} {fmt(result)}", flush=True)
            if upstream:
                result = measure(upstream_base, path, rows, body, args, tmp)
                upstream_results.append(result)
                print(f"{'upstream':8s} {path:22s} {rows:5d} {fmt(result)}", flush=True)
    finally:
        stop(server, 20)
        if upstream:
            upstream.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "engines": status["engines"],
        "results": results,
    }
    if upstream:
        comparison = [
            {
                "endpoint": ours["endpoint"],
                "rows": ours["rows"],
                "requests_per_s_ratio": ours["requests_per_s"] / theirs["requests_per_s"],
                "p50_ratio": theirs["p50_ms"] / ours["p50_ms"],
                "p99_ratio": theirs["p99_ms"] / ours["p99_ms"],
            }
            for ours, theirs in zip(results, upstream_results, strict=True)
        ]
        floors = {
            "predict_requests_per_s_ratio_min": 20,
            "predict_requests_per_s_ratio": comparison[0]["requests_per_s_ratio"],
            "bulk_1000_p50_ms_max": 5,
            "bulk_1000_p50_ms": results[-1]["p50_ms"],
            "upstream_bulk_1000_p50_ms": upstream_results[-1]["p50_ms"],
        }
        floors["met"] = (
            floors["predict_requests_per_s_ratio"] >= 20 and floors["bulk_1000_p50_ms"] <= 5
        )
        print(
            f"\n{'endpoint':22s} {'rows':>5s} {'p50 ms':>17s} {'req/s':>17s} "
            f"{'req/s x':>8s} {'p50 x':>7s}\n{'':28s} {'slocast':>8s} {'upstream':>8s} "
            f"{'slocast':>8s} {'upstream':>8s} {'(s/u)':>8s} {'(u/s)':>7s}"
        )
        for ours, theirs, ratio in zip(results, upstream_results, comparison, strict=True):
            print(
                f"{ours['endpoint']:22s} {ours['rows']:5d} {ours['p50_ms']:8.2f} "
                f"{theirs['p50_ms']:8.2f} {ours['requests_per_s']:8.0f} "
                f"{theirs['requests_per_s']:8.0f} {ratio['requests_per_s_ratio']:8.1f} "
                f"{ratio['p50_ratio']:7.1f}"
            )
        print(
            f"floors: /predict req/s {floors['predict_requests_per_s_ratio']:.1f}x the upstream's "
            f"(>= 20x), 1000-row bulk p50 {floors['bulk_1000_p50_ms']:.2f} ms (<= 5 ms; "
            f"upstream {floors['upstream_bulk_1000_p50_ms']:.2f} ms): "
            + ("met" if floors["met"] else "NOT MET")
        )
        report["upstream"] = {**upstream.info, "results": upstream_results}
        report["comparison"] = comparison
        report["floors"] = floors
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
