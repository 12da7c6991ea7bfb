"""Streaming benchmark: samples at a fixed rate while predictions run under load.

Starts ``slocast latency-trainer`` and ``slocast latency-predictor`` (2 workers)
on free 127.0.0.1 ports with a temporary model directory, then for ``--duration``
seconds (default 60; the issue's soak is ``--duration 600``):

- posts synthetic samples at ``--rate`` per second (default 1000) in batches;
- runs closed-loop ``/predict/bulk/strict`` calls (100 candidates) and counts errors;
- polls ``/status`` on fresh connections to collect, per worker, the time it loaded
  each version (``last_model_load``), and the pointer file to see when the version
  was published: the promotion-to-served time is the worst worker's;
- samples the resident memory of the trainer and of every prediction process.

Prints a summary and optionally writes it as JSON. Every loop is bounded by the
duration.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from slocast.latency.bundle import POINTER, read_pointer
from slocast.latency.synthetic import generate, to_records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def wait_ready(url: str, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}{path} not ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="slocast-stream-bench-"))
    model_dir = root / "models"
    tport, pport = free_port(), free_port()
    env = {
        **os.environ,
        "SLOCAST_LATENCY_HOST": "127.0.0.1",
        "SLOCAST_LATENCY_MODEL_DIR": str(model_dir),
        "SLOCAST_LATENCY_TRAINING_PORT": str(tport),
        "SLOCAST_LATENCY_PREDICTION_PORT": str(pport),
        "SLOCAST_LATENCY_WORKERS": str(args.workers),
        "SLOCAST_LATENCY_RETRAIN_INTERVAL_S": "5",
        "SLOCAST_LATENCY_WINDOW_PER_REGIME": "2000",
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "slocast.cli", f"latency-{name}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(root / f"{name}.log", "wb"),  # noqa: SIM115 - lives with the process
        )
        for name in ("trainer", "predictor")
    }
    training, prediction = f"http://127.0.0.1:{tport}", f"http://127.0.0.1:{pport}"
    stop = threading.Event()
    stats = {"posted": 0, "post_errors": 0, "predictions": 0, "predict_errors": 0, "predict_503": 0}
    published: dict[str, float] = {}  # version -> wall time the pointer changed
    served: dict[tuple[int, str], float] = {}  # (worker pid, version) -> first seen
    memory: list[tuple[float, float, float]] = []  # (t, trainer MB, predictor MB)
    try:
        wait_ready(training, "/healthz", time.monotonic() + 120)
        wait_ready(prediction, "/healthz", time.monotonic() + 120)
        samples = to_records(generate("extreme-contention", 50_000, seed=5))
        probe = {
            "requests": [
                {k: v for k, v in s.items() if not k.startswith("actual_")} for s in samples[:100]
            ]
        }

        def poster() -> None:
            batch, i, period = args.rate // 10, 0, 0.1
            with httpx.Client(timeout=10) as client:
                next_at = time.monotonic()
                while not stop.is_set():
                    chunk = samples[i : i + batch] or samples[:batch]
                    i = (i + batch) % len(samples)
                    r = client.post(f"{training}/add_training_data_bulk", json={"entries": chunk})
                    stats["posted" if r.status_code == 202 else "post_errors"] += (
                        len(chunk) if r.status_code == 202 else 1
                    )
                    next_at += period
                    stop.wait(max(0.0, next_at - time.monotonic()))

        def predictor_load() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    r = client.post(f"{prediction}/predict/bulk/strict", json=probe)
                    if r.status_code == 200:
                        stats["predictions"] += 1
                    elif r.status_code == 503:
                        stats["predict_503"] += 1
                        stop.wait(0.05)
                    else:
                        stats["predict_errors"] += 1

        def status_watch() -> None:
            # A new connection per call: a kept-alive one always reaches the same worker.
            while not stop.is_set():
                body = httpx.get(f"{prediction}/status", timeout=5).json()
                if body.get("model_version"):
                    # the worker's own load time: exact whenever we happen to ask it
                    loaded = datetime.fromisoformat(body["last_model_load"]).timestamp()
                    served.setdefault((body["worker_pid"], body["model_version"]), loaded)
                stop.wait(0.01)

        def pointer_watch() -> None:
            last = None
            while not stop.is_set():
                try:
                    st = os.stat(model_dir / POINTER)
                    sig = (st.st_ino, st.st_mtime_ns)
                    if sig != last:
                        last = sig
                        pointer = read_pointer(model_dir)
                        if pointer is not None:
                            published.setdefault(pointer.version, st.st_mtime_ns / 1e9)
                except FileNotFoundError:
                    pass
                stop.wait(0.005)

        threads = [
            threading.Thread(target=f, daemon=True)
            for f in (poster, predictor_load, status_watch, pointer_watch)
        ]
        for t in threads:
            t.start()
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            workers = children(procs["predictor"].pid)
            memory.append(
                (
                    time.monotonic() - started,
                    rss_mb(procs["trainer"].pid),
                    sum(rss_mb(p) for p in [procs["predictor"].pid, *workers]),
                )
            )
            time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=20)

    pids = {pid for pid, _ in served}
    delays = []
    for version, at in sorted(published.items()):
        seen = [served.get((pid, version)) for pid in pids]
        if pids and all(seen):
            delays.append(max(seen) - at)
    mem = np.array(memory) if memory else np.zeros((1, 3))
    half = max(len(mem) // 2, 1)
    summary = {
        "duration_s": args.duration,
        "samples_posted": stats["posted"],
        "samples_per_s": stats["posted"] / args.duration,
        "post_errors": stats["post_errors"],
        "prediction_calls": stats["predictions"],
        "prediction_errors": stats["predict_errors"],
        "prediction_503_before_first_model": stats["predict_503"],
        "versions_published": len(published),
        "versions_seen_by_every_worker": len(delays),
        "workers_seen": len(pids),
        "publish_to_all_workers_s": {
            "max": max(delays) if delays else None,
            "median": float(np.median(delays)) if delays else None,
        },
        "trainer_rss_mb": {
            "first_half_max": float(mem[:half, 1].max()),
            "second_half_max": float(mem[half:, 1].max() if len(mem) > half else mem[:, 1].max()),
        },
        "predictor_rss_mb": {
            "first_half_max": float(mem[:half, 2].max()),
            "second_half_max": float(mem[half:, 2].max() if len(mem) > half else mem[:, 2].max()),
        },
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
