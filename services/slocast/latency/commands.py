"""CLI of the latency task: protocol B benchmark and the two servers.

- ``slocast bench latency --data TRACE.jsonl --seeds 10 --json OUT`` (or
  ``--synthetic W`` / ``--simulated REGIME`` with ``--rows N``; ``--inner-cv``:
  the same splits scored by CV inside the training 90%, for model selection)
- ``slocast latency-trainer`` / ``slocast latency-predictor`` (settings from env,
  see docs/latency.md); :func:`run_training_server` and
  :func:`run_prediction_server` are what ``slocast service ...`` calls.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from slocast.core.cli_groups import bench_subparsers
from slocast.settings import LatencyPredictionSettings, LatencyTrainingSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers(subparsers)
    latency = bench.add_parser(
        "latency", help="protocol B: P90 TTFT/TPOT vs the upstream reference"
    )
    source = latency.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="JSONL trace of training samples")
    source.add_argument(
        "--synthetic",
        metavar="WORKLOAD",
        help="generate a synthetic trace instead: sharegpt-like, long-prompts, extreme-contention",
    )
    source.add_argument(
        "--simulated",
        metavar="REGIME",
        help="simulate a continuous-batching server instead (slocast.latency.simulator): "
        "light, moderate, saturated, overloaded, disaggregated",
    )
    latency.add_argument(
        "--rows", type=int, default=4000, help="rows of a synthetic or simulated trace"
    )
    latency.add_argument("--seeds", type=int, default=10)
    latency.add_argument("--json", type=Path, help="write the result JSON here")
    latency.add_argument(
        "--inner-cv",
        action="store_true",
        help="score by 5-fold CV inside each seed's 90%% training split (for model "
        "selection: the test 10%% is never read)",
    )
    latency.set_defaults(func=_bench_latency)

    trainer = subparsers.add_parser(
        "latency-trainer", help="run the latency training server (settings from env)"
    )
    trainer.set_defaults(func=lambda _: run_training_server(LatencyTrainingSettings.from_env()))
    predictor = subparsers.add_parser(
        "latency-predictor", help="run the latency prediction server (settings from env)"
    )
    predictor.set_defaults(
        func=lambda _: run_prediction_server(LatencyPredictionSettings.from_env())
    )


def _bench_latency(args: argparse.Namespace) -> int:
    from slocast.core.errors import DatasetError
    from slocast.latency.protocol import run_protocol_b

    if args.seeds < 1:
        raise DatasetError("--seeds must be at least 1")
    oracle = None  # the true conditional P90, where the trace's law is known
    if args.data is not None:
        from slocast.latency.trace import load_trace

        cols = load_trace(args.data)
    elif args.simulated is not None:
        from slocast.latency.simulator import REGIME_NAMES, simulate

        if args.simulated not in REGIME_NAMES:
            raise DatasetError(
                f"unknown regime {args.simulated!r}; choose from {list(REGIME_NAMES)}"
            )
        cols = simulate(args.simulated, args.rows, seed=0)
    else:
        from slocast.latency.model import TARGETS
        from slocast.latency.protocol import QUANTILE
        from slocast.latency.synthetic import WORKLOADS, conditional_quantile_ms, generate

        if args.synthetic not in WORKLOADS:
            raise DatasetError(
                f"unknown workload {args.synthetic!r}; choose from {sorted(WORKLOADS)}"
            )
        cols = generate(args.synthetic, args.rows, seed=0)
        oracle = {t: conditional_quantile_ms(t, cols, QUANTILE) for t in TARGETS}
    report = run_protocol_b(cols, args.seeds, inner_cv=args.inner_cv, oracle=oracle)
    for target, models in report.items():
        if "skipped" in models:
            print(f"{target:5s} not scored: {models['skipped']}")
            continue
        for name, summary in models.items():
            print(
                f"{target:5s} {name:9s} pinball {summary['pinball']['mean']:8.3f} "
                f"+- {summary['pinball']['std']:.3f} ms   coverage "
                f"{summary['coverage']['mean']:.3f} +- {summary['coverage']['std']:.3f}"
            )
        reference = models["reference"]["pinball"]["mean"]
        ratio = _ratio(models["slocast"]["pinball"]["mean"], reference)
        models["ratio"] = ratio
        chosen = models["slocast"].get("chosen")
        print(f"{target:5s} pinball ratio slocast/reference {_ratio_text(ratio)}  chosen {chosen}")
        if "oracle" in models:
            best = _ratio(models["oracle"]["pinball"]["mean"], reference)
            models["oracle_ratio"] = best
            print(
                f"{target:5s} pinball ratio oracle/reference {_ratio_text(best)} "
                "(the true conditional P90: no model can be expected to score lower)"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _ratio(pinball: float, reference: float) -> float | None:
    """``pinball / reference``; None when the reference scored 0 (a constant target
    it predicts exactly), where no ratio exists."""
    return pinball / reference if reference > 0 else None


def _ratio_text(ratio: float | None) -> str:
    return "n/a (reference pinball 0)" if ratio is None else f"{ratio:.3f}"


def run_training_server(settings: LatencyTrainingSettings) -> int:
    import uvicorn

    from slocast.latency.training_app import create_training_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One process: the trainer's window lives in it (scale with replicas + Kafka).
    uvicorn.run(
        create_training_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )
    return 0


def run_prediction_server(settings: LatencyPredictionSettings) -> int:
    from slocast import workers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Workers re-read the same settings from the environment in the app factory.
    return workers.run(
        "slocast.latency.prediction_app:create_prediction_app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )
