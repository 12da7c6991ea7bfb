"""Protocol A on PobleSec for the XGBoost and Prophet families: val/test NRMSE, fit seconds.

Usage: python benchmarks/models_pobleSec.py [family ...] [--seeds N] [--n-jobs J]
The test split is only scored here, never used for fitting or selection.
On a busy machine run with OMP_WAIT_POLICY=PASSIVE: XGBoost's spinning OpenMP
threads otherwise make a 2-thread fit ~6x slower than a 1-thread one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from slocast.adapters.datasets import load_lte
from slocast.core.config import PipelineConfig
from slocast.core.metrics import nrmse
from slocast.core.schema import HEADLINE_COLUMNS, TARGET_COLUMNS
from slocast.models import family_class
from slocast.preprocess.stage import min_rows, preprocess

DATA = "/work/shared/datasets/lte"
HEADLINE = [TARGET_COLUMNS.index(c) for c in HEADLINE_COLUMNS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("families", nargs="*", default=["xgboost", "prophet"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2, help="XGBoost threads")
    args = parser.parse_args()
    config = PipelineConfig()
    train = load_lte(f"{DATA}/PobleSec.csv", min_rows=min_rows(config))
    test = load_lte(f"{DATA}/PobleSec_test.csv", min_rows=config.window + config.horizon)
    data = preprocess(train, test, config)
    print("targets:", ", ".join(TARGET_COLUMNS))
    for family in args.families:
        cls = family_class(family)
        # Prophet's MAP fit does not depend on the seed: one run is enough.
        seeds = range(args.seeds if family == "xgboost" else 1)
        rows = {"val": [], "test": []}
        seconds = []
        for seed in seeds:
            model = cls(data.spec, n_jobs=args.n_jobs) if family == "xgboost" else cls(data.spec)
            started = time.perf_counter()
            model.fit(data, seed=seed)
            seconds.append(time.perf_counter() - started)
            for split in rows:
                ends = data.ends(split)
                pred = model.predict(data.times, data.values, ends)[:, 0]
                rows[split].append(nrmse(data.truth(ends)[:, 0], pred))
        for split, scores in rows.items():
            per_target = np.mean(scores, axis=0)
            headline = [np.mean(s[HEADLINE]) for s in scores]
            print(
                f"{family:8s} {split:4s} headline {np.mean(headline):.4f} +- {np.std(headline):.4f}"
                f"  per target {np.round(per_target, 3).tolist()}"
            )
        print(f"{family:8s} fit seconds {np.round(seconds, 1).tolist()} (seeds {list(seeds)})")


if __name__ == "__main__":
    main()
