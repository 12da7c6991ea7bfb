"""``slocast run``: the whole pipeline on one machine with embedded defaults."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from slocast.core.cli_groups import add_max_gap_rows, bench_subparsers
from slocast.core.config import PipelineConfig
from slocast.core.variants import VARIANTS
from slocast.models import CANDIDATES


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run preprocess -> trainers -> evaluator in-process",
        description="Run the forecasting pipeline in-process (local MLflow store and artifact dir under "
        "$SLOCAST_HOME or ./.slocast; MLFLOW_TRACKING_URI is honoured when set). Without --data it runs "
        "on the synthetic LTE generator.",
    )
    run.add_argument("--data", type=Path, help="training file (CSV or Parquet, LTE schema)")
    run.add_argument(
        "--test-data", type=Path, help="separate test file; default: split off the end of --data"
    )
    run.add_argument(
        "--models",
        default=",".join(CANDIDATES),
        help=f"comma-separated families to train (default: {','.join(CANDIDATES)}); baselines always run",
    )
    run.add_argument(
        "--out", type=Path, default=Path("out"), help="directory for report.json and report.html"
    )
    run.add_argument(
        "--seed", type=int, default=0, help="seed for every stochastic model (default 0)"
    )
    run.add_argument(
        "--task", help="registry task name (default: the data file's stem, or 'synthetic')"
    )
    run.add_argument(
        "--horizon", type=int, default=1, help="steps forecast ahead (default 1, as protocol A)"
    )
    run.add_argument(
        "--window", type=int, default=10, help="input rows per forecast (default 10, as protocol A)"
    )
    run.add_argument(
        "--calibration-blocks",
        type=int,
        default=0,
        help="also calibrate on N blocks of the train split, each with residuals of a model "
        "refitted without it (cross-conformal; default 0: validation only, as protocol A)",
    )
    run.add_argument(
        "--recurrent-seeds",
        type=int,
        default=PipelineConfig.recurrent_seeds,
        help="networks averaged per GRU/LSTM fit, each with its own seed "
        f"(default {PipelineConfig.recurrent_seeds})",
    )
    add_max_gap_rows(run)
    run.add_argument(
        "--synthetic-rows", type=int, default=8000, help="rows of synthetic data without --data"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    sites = bench_subparsers(subparsers).add_parser(
        "sites",
        help="protocol A over a site and generated variants (level shifts, short, bursty)",
        description="Run protocol A (slocast run, fresh store each) on a site and on variants "
        "generated from it deterministically (slocast.core.variants): "
        + "; ".join(f"{v.name}: {v.description}" for v in VARIANTS.values())
        + ". Prints per variant and family the test NRMSE next to persistence and the P90 "
        "coverage per target. A benchmark, not a gate.",
    )
    sites.add_argument("--data", type=Path, required=True, help="the site's training file (CSV)")
    sites.add_argument("--test-data", type=Path, required=True, help="the site's test file (CSV)")
    sites.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated variants (default: all: {','.join(VARIANTS)})",
    )
    sites.add_argument(
        "--models",
        default=",".join(CANDIDATES),
        help="comma-separated families (default: all); baselines always run",
    )
    sites.add_argument("--seed", type=int, default=0)
    sites.add_argument(
        "--recurrent-seeds",
        type=int,
        default=PipelineConfig.recurrent_seeds,
        help="networks averaged per GRU/LSTM fit (as slocast run)",
    )
    sites.add_argument("--json", type=Path, help="write the result JSON here")
    sites.add_argument(
        "--keep", type=Path, help="keep generated files, stores and reports in this directory"
    )
    sites.add_argument("--progress", action="store_true", help="show training progress bars")
    sites.set_defaults(func=_bench_sites)


def _run(args: argparse.Namespace) -> int:
    from slocast.core.errors import ConfigError
    from slocast.evaluate.report import results_table, write_report
    from slocast.models import FAMILIES
    from slocast.runtime.inprocess import run_pipeline
    from slocast.settings import RunSettings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        # MLflow draws its own bar for every artifact download (the evaluator's loads).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in FAMILIES]
    if unknown:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(FAMILIES)}"
        )
    settings = RunSettings(
        data=args.data,
        test_data=args.test_data,
        models=models,
        out=args.out,
        seed=args.seed,
        task=args.task,
        synthetic_rows=args.synthetic_rows,
        config=PipelineConfig(
            window=args.window,
            horizon=args.horizon,
            calibration_blocks=args.calibration_blocks,
            recurrent_seeds=args.recurrent_seeds,
            max_gap_rows=args.max_gap_rows,
        ),
    )
    result = run_pipeline(settings, show_progress=not args.quiet)
    json_path, html_path = write_report(
        result.report,
        args.out,
        test_times=result.evaluation.test_times,
        truth=result.evaluation.truth,
        forecasts=result.evaluation.champion_forecast(),
    )
    print(results_table(result.report))
    print(f"\n{result.report['decision']['reason']}")
    print(f"report: {json_path} {html_path}  ({result.report['timings']['total_seconds']:.1f} s)")
    if result.report["champion"] is not None:
        print(serve_hint(result.report["task"]))
    for family, error in result.failures.items():
        print(f"FAILED {family}: {error}", file=sys.stderr)
    return 1 if result.failures else 0


def _bench_sites(args: argparse.Namespace) -> int:
    import json

    from slocast.core.errors import ConfigError
    from slocast.evaluate.report import json_safe
    from slocast.models import FAMILIES
    from slocast.runtime.sites_bench import run_sites

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [m for m in models if m not in FAMILIES] + [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(
            f"unknown model(s) or variant(s) {', '.join(unknown)}; models: "
            f"{', '.join(FAMILIES)}; variants: {', '.join(VARIANTS)}"
        )
    result = run_sites(
        args.data,
        args.test_data,
        variants=variants,
        models=models,
        seed=args.seed,
        config=PipelineConfig(recurrent_seeds=args.recurrent_seeds),
        keep_dir=args.keep,
        show_progress=args.progress,
        echo=lambda text: print(text + "\n", flush=True),
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_safe(result), indent=2, sort_keys=True) + "\n")
    return 0


def serve_hint(task: str) -> str:
    """The command that serves the champion this run left for ``task``.

    ``slocast serve`` reads the same ``SLOCAST_HOME`` / ``MLFLOW_TRACKING_URI`` as the run,
    so only the task has to be named (its default is 'synthetic').
    """
    return f"serve it: slocast serve --task {shlex.quote(task)} --port 8000"
