"""Compare TPOT (or TTFT) model configurations without reading protocol B's test rows.

Every candidate is scored by 5-fold cross-validation inside each seed's 90% training
split (:func:`slocast.latency.protocol.run_seed_inner_cv`): the whole procedure,
cross-conformal offsets included, is refitted on four folds and scored on the fifth,
and so is the upstream reference, so the ratio is like protocol B's. The chosen
configuration is then run once on protocol B (``make bench-latency``).

    python benchmarks/latency_select.py [--data TRACE.jsonl | --synthetic W] [--seeds 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slocast.latency.model import TARGET_PARAMS, TreeParams
from slocast.latency.protocol import run_protocol_b
from slocast.latency.synthetic import generate
from slocast.latency.trace import load_trace

TRACE = Path(__file__).resolve().parents[1] / "../shared/datasets/llm-latency/sharegpt-h200.jsonl"

# The TPOT candidates of docs/latency.md (beside the served TARGET_PARAMS).
CANDIDATES: dict[str, TreeParams] = {
    "log_squared d3 100 lr.1 (previous)": TreeParams(
        objective="log_squared", max_depth=3, n_estimators=100, learning_rate=0.1
    ),
    "log_squared d3 100 lr.1 sub.5 mcw20": TreeParams(
        objective="log_squared",
        max_depth=3,
        n_estimators=100,
        learning_rate=0.1,
        subsample=0.5,
        min_child_weight=20.0,
    ),
    "quantile (reg:quantileerror, not monotone) d6 200": TreeParams(objective="quantile"),
    "log_quantile d3 100 eta.02 sub.8 mcw1": TreeParams(
        objective="log_quantile", max_depth=3, n_estimators=100, learning_rate=0.02
    ),
    "log_quantile d3 200 eta.01 sub.5 mcw20": TreeParams(
        objective="log_quantile",
        max_depth=3,
        n_estimators=200,
        learning_rate=0.01,
        subsample=0.5,
        min_child_weight=20.0,
    ),
    "served": TARGET_PARAMS["tpot"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRACE)
    parser.add_argument("--synthetic", help="a synthetic workload instead of --data")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--target", choices=("ttft", "tpot"), default="tpot")
    parser.add_argument("--only", help="run the candidates whose name contains this")
    args = parser.parse_args()
    cols = generate(args.synthetic, args.rows, seed=0) if args.synthetic else load_trace(args.data)
    for name, params in CANDIDATES.items():
        if args.only and args.only not in name:
            continue
        start = time.perf_counter()
        report = run_protocol_b(
            cols,
            args.seeds,
            params={args.target: params},
            inner_cv=True,
            targets=(args.target,),
        )[args.target]
        ours, ref = report["slocast"], report["reference"]
        print(
            f"{name:52s} pinball {ours['pinball']['mean']:.4f} "
            f"ratio {ours['pinball']['mean'] / ref['pinball']['mean']:.3f} "
            f"coverage {ours['coverage']['mean']:.3f} +- {ours['coverage']['std']:.3f} "
            f"(reference coverage {ref['coverage']['mean']:.3f}; "
            f"{time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
