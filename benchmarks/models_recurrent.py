"""Protocol A on PobleSec for the GRU and LSTM forecasters: NRMSE, epochs, fit time.

Usage: python benchmarks/models_recurrent.py [--families gru lstm] [--seeds 0 1 2]
Needs the shared datasets beside the repo (../shared/datasets/lte). Selection of
hyperparameters used validation NRMSE only; test numbers are reported, not tuned on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from slocast.adapters.datasets import load_lte
from slocast.core.config import PipelineConfig
from slocast.core.metrics import nrmse
from slocast.core.schema import TARGET_COLUMNS
from slocast.models import family_class
from slocast.preprocess.stage import min_rows, preprocess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "lte"


def step_one_nrmse(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """NRMSE per target at step 1, then the headline (mean of down and up) appended."""
    scores = nrmse(truth[:, 0], pred[:, 0])
    down, up = TARGET_COLUMNS.index("down"), TARGET_COLUMNS.index("up")
    return np.append(scores, (scores[down] + scores[up]) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site", default="PobleSec")
    parser.add_argument("--families", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()

    config = PipelineConfig()
    train = load_lte(DATA / f"{args.site}.csv", min_rows=min_rows(config))
    test = load_lte(DATA / f"{args.site}_test.csv", min_rows=config.window + config.horizon)
    data = preprocess(train, test, config)
    val_ends, test_ends = data.ends("val"), data.ends("test")
    val_truth, test_truth = data.truth(val_ends), data.truth(test_ends)
    names = [*TARGET_COLUMNS, "headline"]

    for family in args.families:
        rows = []
        for seed in args.seeds:
            model = family_class(family)(data.spec)
            wall, cpu = time.perf_counter(), time.process_time()
            report = model.fit(data, seed=seed)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            val = step_one_nrmse(val_truth, model.predict(data.times, data.values, val_ends))
            tst = step_one_nrmse(test_truth, model.predict(data.times, data.values, test_ends))
            epochs, best = report.metrics["epochs"], report.metrics["best_epoch"]
            rows.append(np.concatenate([val, tst, [epochs, best, wall, cpu]]))
            print(
                f"{family} seed={seed} epochs={epochs:.0f} best={best:.0f} fit={wall:.1f}s "
                f"(cpu {cpu:.1f}s) val={val[-1]:.4f} test={tst[-1]:.4f}",
                flush=True,
            )
        table = np.array(rows)
        mean, std = table.mean(axis=0), table.std(axis=0)
        k = len(names)
        print(f"\n{family}: mean +- std over seeds {args.seeds}")
        print(f"{'target':<12}{'val NRMSE':>18}{'test NRMSE':>18}")
        for i, name in enumerate(names):
            print(
                f"{name:<12}{mean[i]:>10.4f} +- {std[i]:.4f}{mean[k + i]:>10.4f} +- {std[k + i]:.4f}"
            )
        extra = ("epochs", "best epoch", "fit wall s", "fit cpu s")
        for j, name in enumerate(extra):
            print(f"{name:<12}{mean[2 * k + j]:>10.1f} +- {std[2 * k + j]:.1f}")
        print()


if __name__ == "__main__":
    main()
