"""Prediction-server benchmark: wrk (closed loop) against a real ``slocast serve``.

    python benchmarks/serve_bench.py --data ../shared/datasets/lte/PobleSec.csv \
        --test-data ../shared/datasets/lte/PobleSec_test.csv

1. Trains an XGBoost champion on PobleSec in ``--home`` (reused when a champion
   is already there), with the embedded pipeline (`slocast run`), which compiles
   it at promotion.
2. Starts ``slocast serve --workers 2`` (one per core) on a free local port.
3. For ``GET /healthz`` (the HTTP ceiling), a single forecast and batches of
   10/100/1000 series (real windows of the test file), runs ``wrk`` with a Lua
   script that POSTs the body, and reports requests/s, series (rows) /s, client
   p50/p99, server-side p50/p99 (interpolated from the latency histogram, which
   one scrape sums over all workers) and the engine that computed the forecasts
   (predictions metric).
4. Times both tree engines (``SLOCAST_TREE_ENGINE=compiled|xgboost``) in-process
   on the same windows for every batch size: whole point forecasts, features
   included.

Data stays where it is: the script reads the CSVs in place.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

BATCH_SIZES = (10, 100, 1000)
TASK = "PobleSec"
LUA_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
"""
LUA_DONE = """
done = function(summary, latency, requests)
  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"non2xx\\": %d, \\"socket_errors\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout))
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "SLOCAST_HOME": str(home), "SLOCAST_TASK": TASK}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _registry(home: Path):
    """The embedded registry of ``home``, artifacts under it (never ./mlruns): the
    experiment may be created here, before ``slocast run`` has made it."""
    from slocast.adapters.registry import ModelRegistry

    return ModelRegistry(
        f"sqlite:///{home / 'mlflow.db'}", artifact_location=(home / "mlruns").as_uri()
    )


def ensure_champion(home: Path, data: Path, test_data: Path) -> None:

    registry = _registry(home)
    ref = registry.champion(TASK)
    if ref is not None and ref.family == "xgboost" and _loads(registry, ref):
        print(f"reusing champion {TASK} v{ref.version} (xgboost) in {home}", file=sys.stderr)
        # A champion promoted before compile-at-promotion gets its libraries now,
        # as the promotion builds them, so the server adopts instead of compiling.
        from slocast.evaluate.stage import attach_compiled

        attach_compiled(registry, ref, Path(tempfile.mkdtemp(prefix="bench-compile-")))
        return
    print(f"training an XGBoost champion on {data.name} in {home} ...", file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "slocast.cli",
            "run",
            "--data",
            str(data),
            "--test-data",
            str(test_data),
            "--models",
            "xgboost",
            "--task",
            TASK,
            "--out",
            str(home / "out"),
            "--quiet",
        ],
        env=_env(home),
        check=True,
    )
    ref = registry.champion(TASK)
    if ref is None or ref.family != "xgboost":
        raise SystemExit(f"XGBoost did not become champion for {TASK} (champion: {ref})")
    print(f"trained in {time.perf_counter() - started:.0f}s", file=sys.stderr)


def _loads(registry, ref) -> bool:
    """Whether the stored champion still loads with the current code (features may change)."""
    from slocast.models.bundle import load_bundle

    try:
        load_bundle(registry.download(ref, Path(tempfile.mkdtemp(prefix="bench-check-"))))
    except Exception as exc:  # noqa: BLE001 - any failure means: train again
        print(f"stored champion v{ref.version} does not load ({exc}); retraining", file=sys.stderr)
        return False
    return True


def request_bodies(test_data: Path, history_rows: int, out: Path) -> dict[str, Path]:
    """A single-forecast body and batch bodies from real test windows."""
    from slocast.adapters.datasets import load_lte
    from slocast.core.features import fill_missing
    from slocast.core.schema import FEATURE_COLUMNS

    frame = load_lte(test_data, min_rows=history_rows)
    times = np.datetime_as_string(frame["time"].to_numpy(), unit="s").tolist()
    values = fill_missing(frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)).tolist()
    rows = [
        {"time": t, **dict(zip(FEATURE_COLUMNS, v, strict=True))}
        for t, v in zip(times, values, strict=True)
    ]
    starts = np.linspace(0, len(rows) - history_rows, max(BATCH_SIZES)).astype(int)
    histories = [rows[s : s + history_rows] for s in starts]
    bodies = {"single": {"history": histories[0], "quantiles": [0.9]}}
    for size in BATCH_SIZES:
        bodies[f"batch{size}"] = {
            "series": [{"id": i, "history": h} for i, h in enumerate(histories[:size])],
            "quantiles": [0.9],
        }
    paths = {}
    for name, body in bodies.items():
        path = out / f"{name}.json"
        path.write_bytes(orjson.dumps(body))
        paths[name] = path
    return paths


def start_server(home: Path, port: int, workers: int) -> subprocess.Popen:
    log = open(home / "serve-bench.log", "wb")  # noqa: SIM115 - lives as long as the server
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slocast.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_workers(url: str, workers: int, timeout: float = 300.0) -> dict:
    """Wait until every worker answers /v1/model; return one worker's model info."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    info: dict = {}
    while time.monotonic() < deadline:
        try:
            with httpx.Client(base_url=url, timeout=5.0) as client:
                response = client.get("/v1/model")
            if response.status_code == 200:
                info = response.json()
                pids.add(info["pid"])
                if len(pids) >= workers:
                    return info
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} not ready with {workers} workers after {timeout}s")


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.e+-]+)$")


def scrape_workers(url: str) -> dict[str, list[tuple[str, dict, float]]]:
    """/metrics samples of the whole server (one scrape sums over its workers)."""
    with httpx.Client(base_url=url, timeout=5.0) as client:
        text = client.get("/metrics").text
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples.append((match.group(1), labels, float(match.group(3))))
    return {"server": samples}


def server_quantiles(
    before: dict, after: dict, route: str, metric: str = "slocast_http_request_duration_seconds"
) -> tuple[float, float]:
    """p50 and p99 (ms) of a route's 200 responses, merged over workers, from bucket diffs."""
    buckets: dict[float, float] = {}
    bucket_name = f"{metric}_bucket"

    def wanted(name: str, lab: dict) -> bool:
        return (
            name == bucket_name and lab.get("route") == route and lab.get("status", "200") == "200"
        )

    for pid, samples in after.items():
        old = {
            (name, lab.get("le")): value
            for name, lab, value in before.get(pid, [])
            if wanted(name, lab)
        }
        for name, lab, value in samples:
            if not wanted(name, lab):
                continue
            le = float(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + value - old.get((name, lab["le"]), 0.0)
    edges = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan"), float("nan")

    def quantile(q: float) -> float:
        target, lower, below = q * total, 0.0, 0.0
        for edge in edges:
            count = buckets[edge]
            if count >= target:
                if edge == float("inf"):
                    return lower * 1e3
                share = (target - below) / max(count - below, 1e-12)
                return (lower + share * (edge - lower)) * 1e3
            lower, below = edge, count
        return float("nan")

    return quantile(0.5), quantile(0.99)


def engine_counts(before: dict, after: dict) -> dict[str, float]:
    counts: dict[str, float] = {}
    for pid, samples in after.items():
        old = {
            lab.get("engine"): v
            for n, lab, v in before.get(pid, [])
            if n == "slocast_predictions_total"
        }
        for name, lab, value in samples:
            if name == "slocast_predictions_total":
                engine = lab["engine"]
                counts[engine] = counts.get(engine, 0.0) + value - old.get(engine, 0.0)
    return {k: v for k, v in counts.items() if v > 0}


def server_cpu_seconds(session: int) -> float:
    """User + system CPU of every process in the server's session (its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process went away
            continue
        if int(fields[3]) == session:  # session id (start_new_session=True)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def run_wrk(url: str, path: str, lua: Path, seconds: int, connections: int) -> dict:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(lua),
            f"{url}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON ") :])


def engine_microbench(home: Path, test_data: Path) -> list[dict]:
    """Both tree engines on the same real windows, best of several calls."""
    from slocast.adapters.datasets import load_lte
    from slocast.core.features import fill_missing
    from slocast.core.schema import FEATURE_COLUMNS
    from slocast.models.bundle import load_bundle
    from slocast.models.compiled_bundle import TAG_COMPILED_INDEX
    from slocast.serve.tree_engine import TREE_ENGINES, load_tree_predictor

    registry = _registry(home)
    ref = registry.champion(TASK)
    bundle_dir = registry.download(ref, Path(tempfile.mkdtemp(prefix="bench-bundle-")))
    bundle = load_bundle(bundle_dir)
    predictors = {
        engine: load_tree_predictor(
            bundle,
            bundle_dir,
            home / "serving" / "compiled",
            engine=engine,
            compiled_index_sha256=ref.tags.get(TAG_COMPILED_INDEX),
        )
        for engine in TREE_ENGINES
    }
    frame = load_lte(test_data, min_rows=bundle.forecaster.history_rows)
    times = frame["time"].to_numpy().astype("datetime64[ns]")
    values = fill_missing(frame[list(FEATURE_COLUMNS)].to_numpy(np.float64))
    rows = []
    for size in (1, *BATCH_SIZES):
        ends = np.linspace(bundle.forecaster.history_rows, len(values), size).astype(np.int64)
        timing = {"series": size}
        for engine, predictor in predictors.items():
            best = float("inf")
            for _ in range(20 if size < 1000 else 7):
                started = time.perf_counter()
                predictor.predict(times, values, ends)
                best = min(best, time.perf_counter() - started)
            timing[f"{engine} ({predictor.engine})"] = best * 1e6
        rows.append(timing)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--test-data", type=Path, required=True)
    parser.add_argument("--home", type=Path, help="SLOCAST_HOME to train in / reuse")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")

    home = (args.home or Path(tempfile.gettempdir()) / "slocast-serve-bench").resolve()
    home.mkdir(parents=True, exist_ok=True)
    ensure_champion(home, args.data.resolve(), args.test_data.resolve())

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(home, port, args.workers)
    results: dict = {"scenarios": [], "load_average": {"start": os.getloadavg()}}
    try:
        info = wait_workers(url, args.workers)
        results["model"] = {k: info.get(k) for k in ("name", "version", "family", "engine")}
        results["engine_detail"] = {
            k: info.get(k) for k in ("engine_configured", "engine_reason", "compiled_libraries")
        }
        scratch = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        bodies = request_bodies(args.test_data, info["history_rows"], scratch)
        done_lua = scratch / "done.lua"
        done_lua.write_text(LUA_DONE)
        get_lua = scratch / "get.lua"
        get_lua.write_text(LUA_DONE)
        scenarios = [("healthz", "/healthz", get_lua, 0)]
        for name, path in bodies.items():
            lua = scratch / f"{name}.lua"
            lua.write_text(LUA_POST.format(body=path) + LUA_DONE)
            series = 1 if name == "single" else int(name[len("batch") :])
            route = "/v1/forecast" if name == "single" else "/v1/forecast/batch"
            scenarios.append((name, route, lua, series))
        # Latency without queueing: one connection, one request at a time.
        scenarios.insert(2, ("single-c1", "/v1/forecast", scratch / "single.lua", 1))
        results["connections"] = args.connections
        for name, route, lua, series in scenarios:
            connections = 1 if name.endswith("-c1") else args.connections
            run_wrk(url, route, lua, 2, connections)  # warm-up
            before = scrape_workers(url)
            cpu_before = server_cpu_seconds(server.pid)
            stats = run_wrk(url, route, lua, args.seconds, connections)
            cpu = server_cpu_seconds(server.pid) - cpu_before
            after = scrape_workers(url)
            rps = stats["requests"] / (stats["duration_us"] / 1e6)
            p50_s, p99_s = server_quantiles(before, after, route)
            p50_h, p99_h = server_quantiles(
                before, after, route, "slocast_forecast_handler_seconds"
            )
            row = {
                "scenario": name,
                "requests_per_s": round(rps, 1),
                "series_per_s": round(rps * series, 1),
                "rows_per_s": round(rps * series * info["history_rows"], 1),
                "p50_ms": stats["p50_us"] / 1e3,
                "p99_ms": stats["p99_us"] / 1e3,
                "server_p50_ms": round(p50_s, 3),
                "server_p99_ms": round(p99_s, 3),
                "service_p50_ms": round(p50_h, 3),
                "service_p99_ms": round(p99_h, 3),
                "non2xx": stats["non2xx"],
                "socket_errors": stats["socket_errors"],
                "engines": engine_counts(before, after),
                # CPU the server's processes spent per request: unlike req/s, barely
                # moved by other load on the machine.
                "server_cpu_us": round(cpu / max(stats["requests"], 1) * 1e6, 1),
            }
            results["scenarios"].append(row)
            print(_line(row), file=sys.stderr)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    results["load_average"]["end"] = os.getloadavg()
    results["engine_microbench_us"] = engine_microbench(home, args.test_data)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _line(row: dict) -> str:
    return (
        f"{row['scenario']:>10}: {row['requests_per_s']:>9.1f} req/s  "
        f"{row['series_per_s']:>10.1f} series/s  p50 {row['p50_ms']:.2f} ms  "
        f"p99 {row['p99_ms']:.2f} ms  server p50 {row['server_p50_ms']:.3f} ms  "
        f"service p50 {row['service_p50_ms']:.3f} ms  cpu {row['server_cpu_us']:.0f} us/req  "
        f"engines {row['engines']}  non-2xx {row['non2xx']}"
    )


def report(results: dict) -> str:
    load = results["load_average"]
    lines = [
        f"model: {results['model']}",
        f"engine: {results['engine_detail']}",
        "load average (1/5/15 min) at start "
        + "/".join(f"{x:.1f}" for x in load["start"])
        + ", at end "
        + "/".join(f"{x:.1f}" for x in load["end"]),
        "",
    ]
    header = (
        f"{'scenario':>10} {'req/s':>9} {'series/s':>10} {'rows/s':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'srv p50':>8} {'srv p99':>8} {'svc p50':>8} {'svc p99':>8} "
        f"{'cpu us':>8} {'non2xx':>6}  engine"
    )
    lines.append(header)
    for r in results["scenarios"]:
        lines.append(
            f"{r['scenario']:>10} {r['requests_per_s']:>9.1f} {r['series_per_s']:>10.1f} "
            f"{r['rows_per_s']:>11.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['server_p50_ms']:>8.3f} {r['server_p99_ms']:>8.3f} "
            f"{r['service_p50_ms']:>8.3f} {r['service_p99_ms']:>8.3f} "
            f"{r['server_cpu_us']:>8.0f} {r['non2xx']:>6}  "
            f"{','.join(r['engines']) or '-'}"
        )
    by_name = {r["scenario"]: r for r in results["scenarios"]}
    ceiling = by_name["healthz"]["requests_per_s"]
    single = by_name["single"]
    lines += [
        "",
        f"single forecast = {single['requests_per_s'] / ceiling:.0%} of the /healthz ceiling "
        f"({single['requests_per_s']:.0f} vs {ceiling:.0f} req/s); targets >= 50% and >= 1500 req/s",
        f"single forecast server-side p50 = {single['server_p50_ms']:.3f} ms with "
        f"{results['connections']} connections (includes queueing in the event loop), "
        f"{by_name['single-c1']['server_p50_ms']:.3f} ms with 1 connection; service time p50 "
        f"{single['service_p50_ms']:.3f} ms (target < 1 ms)",
        f"server CPU per request: /healthz {by_name['healthz']['server_cpu_us']:.0f} us, single "
        f"forecast {single['server_cpu_us']:.0f} us (the req/s ratio follows the CPU ratio)",
        "srv = request start to last byte in the server; svc = handler time (wall) only; "
        "cpu = user+system CPU of all server processes per request",
        "",
        "tree engines in-process, best call (us):",
    ]
    for timing in results["engine_microbench_us"]:
        cells = "  ".join(f"{k} {v:9.1f}" for k, v in timing.items() if k != "series")
        lines.append(f"  {timing['series']:>5} series: {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
