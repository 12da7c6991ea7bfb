"""Wall time per stage and model, and peak memory, for a protocol-A pipeline run.

    python benchmarks/pipeline_bench.py --data PobleSec.csv --test-data PobleSec_test.csv [--seeds 3]

Runs the embedded pipeline in a fresh temporary SLOCAST_HOME (so nothing is
reused), prints per-stage seconds, the peak resident memory, the results table,
and, with several seeds, mean and spread of each model's test NRMSE.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from slocast.evaluate.report import results_table
from slocast.models import CANDIDATES
from slocast.runtime.inprocess import run_pipeline
from slocast.settings import RunSettings

TARGET_SECONDS = 240.0  # the budget for the whole PobleSec run on 2 cores
PUBLISHED = {"PobleSec": 0.834, "LesCorts": 0.310, "ElBorn": 0.820}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--test-data", type=Path)
    parser.add_argument("--models", default=",".join(CANDIDATES))
    parser.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    args = parser.parse_args()

    runs = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="slocast-bench-") as home:
            settings = RunSettings(
                data=args.data,
                test_data=args.test_data,
                models=tuple(m for m in args.models.split(",") if m),
                out=Path(home) / "out",
                seed=seed,
                home=Path(home),
            )
            started = time.perf_counter()
            result = run_pipeline(settings, show_progress=False)
            wall = time.perf_counter() - started
        runs.append((seed, wall, result.report))
        print(f"\n== seed {seed}: {wall:.1f} s wall ==")
        print(results_table(result.report))
        for key, value in sorted(result.report["timings"].items()):
            print(f"  {key:<32} {value:8.2f}")
        if result.failures:
            print(f"  FAILURES: {result.failures}")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    walls = [w for _, w, _ in runs]
    site = args.data.stem
    print(
        f"\npeak RSS {peak_mb:.0f} MB; wall per run {statistics.mean(walls):.1f} s "
        f"= {statistics.mean(walls) / TARGET_SECONDS:.2f} x the {TARGET_SECONDS:.0f} s target"
    )
    summary = {}
    for name in runs[0][2]["models"]:
        values = [r["models"][name]["nrmse"]["avg"] for _, _, r in runs if name in r["models"]]
        cov = [
            min(r["models"][name]["coverage"]["0.9"].values())
            for _, _, r in runs
            if name in r["models"]
        ]
        summary[name] = {
            "nrmse_mean": statistics.mean(values),
            "nrmse_std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min_p90_coverage_mean": statistics.mean(cov),
        }
        line = f"  {name:<16} NRMSE {summary[name]['nrmse_mean']:.4f} +- {summary[name]['nrmse_std']:.4f}"
        if site in PUBLISHED:
            line += f"  ({summary[name]['nrmse_mean'] / PUBLISHED[site]:.3f} x best published {PUBLISHED[site]})"
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [r for _, _, r in runs],
                    "walls": walls,
                    "peak_rss_mb": peak_mb,
                    "summary": summary,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
