"""CPU per stage of the LTE forecast request path, in-process (no HTTP).

Loads the champion of ``--home`` (trained by ``serve_bench.py``, e.g. ``make
bench-serve``) as a worker does, builds the single and batch bodies of
``serve_bench.py`` from real test windows, and times each stage of
``/v1/forecast`` and ``/v1/forecast/batch`` (1000 series): thread CPU time, best
of five repetitions. Usage:

    python benchmarks/serve_stages.py --home /tmp/lte-home \
        --test-data ../shared/datasets/lte/PobleSec_test.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cpu_timing import best_cpu_seconds  # noqa: E402
from serve_bench import TASK, request_bodies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--test-data", type=Path, required=True)
    args = parser.parse_args()
    os.environ["SLOCAST_HOME"] = str(args.home)
    os.environ["SLOCAST_TASK"] = TASK
    from slocast.serve.forecasting import batch_body, forecast_body
    from slocast.serve.metrics import ServeMetrics
    from slocast.serve.reloading import ModelHolder
    from slocast.serve.validation import parse_batch, parse_forecast
    from slocast.settings import ServeSettings

    holder = ModelHolder(ServeSettings.from_env(), ServeMetrics())
    outcome = holder.refresh()
    model = holder.current
    if model is None:
        raise SystemExit(f"no champion in {args.home}: {outcome}")
    paths = request_bodies(args.test_data, model.rules.history_rows, Path(tempfile.mkdtemp()))
    single = paths["single"].read_bytes()
    batch = paths["batch1000"].read_bytes()
    print(f"model v{model.version} {model.bundle.family} engine {model.predictor.engine}")
    for name, body, parse, render, calls in (
        ("single", single, parse_forecast, forecast_body, 3000),
        ("batch1000", batch, parse_batch, batch_body, 5),
    ):
        request = parse(body, model.rules)
        rows = model.rules.history_rows
        ends = np.arange(rows, len(request.values) + 1, rows, dtype=np.int64)
        point = model.predictor.predict(request.times, request.values, ends)
        which = model.bounds.which(request.quantiles)
        stages = {
            "parse": lambda b=body, p=parse: p(b, model.rules),
            "predict": lambda r=request, e=ends: model.predictor.predict(r.times, r.values, e),
            "bounds": lambda r=request, e=ends, p=point, q=which: model.bounds.upper(
                p, r.values, e, q
            ),
            "compute+render": lambda r=request, f=render: f(model, r),
            "whole": lambda b=body, p=parse, f=render: f(model, p(b, model.rules)),
        }
        for stage, fn in stages.items():
            print(f"{name:10s} {stage:15s} {1e6 * best_cpu_seconds(fn, calls):10.1f} us")


if __name__ == "__main__":
    main()
