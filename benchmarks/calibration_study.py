"""Conformal calibration schemes compared: P90 test coverage per target.

    python benchmarks/calibration_study.py --data PobleSec.csv --test-data PobleSec_test.csv \
        [--families gru,lstm,xgboost] [--seeds 3] [--blocks 2] [--json OUT]

Each family is trained once per seed with ``calibration_blocks = --blocks``; the
same trained model is then calibrated three ways and every bound is scored on the
test windows (never used for fitting or calibration):

- ``validation_pooled``: validation residuals, one offset per target;
- ``validation_change_bins``: validation residuals, Mondrian by predicted-change
  bins (the pipeline's default);
- ``cross_conformal_change_bins``: validation plus cross-fitted train blocks, by bins.

Prints the P90
coverage per target, how many (seed, target) pairs land in [0.87, 0.93], the mean
distance to 0.9 and the mean P90 width relative to the mean truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from slocast.core.config import PipelineConfig
from slocast.core.conformal import Calibration
from slocast.core.features import predicted_change, residual_scale
from slocast.core.schema import TARGET_COLUMNS
from slocast.models.base import Forecaster
from slocast.models.bundle import ModelBundle
from slocast.preprocess.dataset import ProcessedDataset
from slocast.preprocess.stage import preprocess
from slocast.runtime.inprocess import load_inputs
from slocast.settings import RunSettings
from slocast.train.stage import change_bins, train_family

Q = 0.9
BAND = (0.87, 0.93)


def _dataset(data: Path, test: Path | None, blocks: int) -> ProcessedDataset:
    # The run's own loader: same validation and error messages as `slocast run`.
    config = PipelineConfig(calibration_blocks=blocks)
    train, held, sources = load_inputs(RunSettings(data=data, test_data=test, config=config))
    return preprocess(train, held, config, sources=sources)


def _score(
    data: ProcessedDataset, forecaster: Forecaster, point: np.ndarray, calibration: Calibration
) -> dict:
    ends = data.ends("test")
    # The product's one path to a bound: ModelBundle.upper, as the evaluator and server use.
    upper = ModelBundle(forecaster, calibration).upper(point, Q, data.values, ends)[:, 0]
    truth = data.truth(ends)[:, 0]
    coverage = np.nanmean(truth <= upper, axis=0)
    width = np.nanmean(upper - point[:, 0], axis=0) / np.nanmean(truth, axis=0)
    return {
        "coverage": dict(zip(TARGET_COLUMNS, map(float, coverage), strict=True)),
        "relative_width": dict(zip(TARGET_COLUMNS, map(float, width), strict=True)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--test-data", type=Path)
    parser.add_argument("--families", default="gru,lstm,xgboost")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.blocks < 1:
        parser.error("--blocks must be >= 1 (0 is validation only, the comparison's baseline)")

    data = _dataset(args.data, args.test_data, args.blocks)
    val_ends = data.ends("val")
    results: dict = {}
    for family in [f for f in args.families.split(",") if f]:
        for seed in range(args.seeds):
            started = time.perf_counter()
            trained = train_family(data, family, seed=seed)
            forecast = trained.calibration_forecast
            on_val = np.isin(forecast.ends, val_ends)
            ends, prediction = forecast.ends[on_val], forecast.prediction[on_val]
            scale = residual_scale(data.spec, data.values, ends)
            change = predicted_change(data.spec, prediction, data.values, ends, scale)
            truth = data.truth(ends)
            schemes = {
                "validation_pooled": Calibration.fit(truth, prediction, (Q,), scale=scale),
                "validation_change_bins": Calibration.fit(
                    truth,
                    prediction,
                    (Q,),
                    scale=scale,
                    group_by=change,
                    bins=change_bins(ends.size),
                ),
                "cross_conformal_change_bins": trained.bundle.calibration,
            }
            forecaster = trained.bundle.forecaster
            point = forecaster.predict(data.times, data.values, data.ends("test"))
            for name, calibration in schemes.items():
                entry = _score(data, forecaster, point, calibration)
                entry["n_calibration"] = calibration.n_calibration
                results.setdefault(family, {}).setdefault(name, []).append(entry)
                cov = " ".join(f"{v:.3f}" for v in entry["coverage"].values())
                print(f"{family:8s} seed {seed} {name:28s} P90 coverage {cov}", flush=True)
            print(f"  ({time.perf_counter() - started:.0f} s incl. {args.blocks} refits)")

    print(f"\nP90 coverage per target ({', '.join(TARGET_COLUMNS)}); band {BAND}")
    summary = {}
    for family, schemes in results.items():
        for name, entries in schemes.items():
            cov = np.array([list(e["coverage"].values()) for e in entries])
            width = np.array([list(e["relative_width"].values()) for e in entries])
            in_band = int(((cov >= BAND[0]) & (cov <= BAND[1])).sum())
            summary[f"{family}/{name}"] = {
                "in_band": in_band,
                "pairs": int(cov.size),
                "mean_abs_gap": float(np.abs(cov - Q).mean()),
                "mean_relative_width": float(width.mean()),
                "coverage_mean": dict(zip(TARGET_COLUMNS, map(float, cov.mean(0)), strict=True)),
            }
            print(
                f"{family:8s} {name:28s} in band {in_band:2d}/{cov.size}  |cov-0.9| "
                f"{np.abs(cov - Q).mean():.4f}  width {width.mean():.3f}  mean "
                + " ".join(f"{v:.3f}" for v in cov.mean(0))
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
