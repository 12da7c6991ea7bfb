"""``slocast run``: the whole pipeline on one machine with embedded defaults."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from slocast.core.config import PipelineConfig
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
        "--synthetic-rows", type=int, default=8000, help="rows of synthetic data without --data"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from slocast.core.errors import ConfigError
    from slocast.evaluate.report import results_table, write_report
    from slocast.models import FAMILIES
    from slocast.runtime.inprocess import run_pipeline
    from slocast.runtime.settings import RunSettings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
            window=args.window, horizon=args.horizon, calibration_blocks=args.calibration_blocks
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


def serve_hint(task: str) -> str:
    """The command that serves the champion this run left for ``task``.

    ``slocast serve`` reads the same ``SLOCAST_HOME`` / ``MLFLOW_TRACKING_URI`` as the run,
    so only the task has to be named (its default is 'synthetic').
    """
    return f"serve it: slocast serve --task {shlex.quote(task)} --port 8000"
