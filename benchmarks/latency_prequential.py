"""Prequential accuracy of the streaming trainer on simulated servers.

Protocol B scores one offline fit. A deployment serves a bound from the model the
streaming trainer last promoted, on samples it has not seen yet, while the load
ramps and waves. This replays a simulated trace in the order it was recorded, in
batches as a router posts them, through :class:`slocast.latency.trainer.StreamingTrainer`
(its default window, promotion rule and ACI, driven in-process): every batch is
first predicted by the serving models, then ingested; every ``--retrain-every``
samples ``retrain_once`` runs (it recalibrates by ACI when nothing is due).

The reference is the upstream production configuration (protocol B's
``fit_reference``: XGBoost quantile, 200 trees, depth 6) refitted at the same
cadence on every sample seen so far (the last ``--reference-window`` per target),
served without offsets, as the upstream trainer serves it. Both are scored on the
same rows: those that arrive once both have a model. Prints, per regime and target,
the prequential pinball ratio slocast / reference and both coverages.

    python benchmarks/latency_prequential.py [--regimes light,saturated] [--rows 12000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from slocast.core.metrics import coverage, pinball_loss
from slocast.latency.features import build_features, regimes
from slocast.latency.model import TARGET_COLUMNS, TARGETS
from slocast.latency.protocol import QUANTILE, fit_reference
from slocast.latency.simulator import REGIME_NAMES, simulate
from slocast.latency.stream import InProcessStream, SampleBatch
from slocast.latency.trainer import StreamingTrainer
from slocast.settings import LatencyTrainingSettings


def trainer_for(model_dir: Path) -> StreamingTrainer:
    """The trainer with the served defaults (settings.py), in-process."""
    settings = dataclasses.replace(LatencyTrainingSettings.from_env({}), model_dir=model_dir)
    return StreamingTrainer(settings, InProcessStream(10))


def replay(regime: str, rows: int, seed: int, batch: int, every: int, window: int) -> dict:
    cols = simulate(regime, rows, seed=seed)
    n = cols["actual_ttft_ms"].shape[0]
    features, regime_ids = build_features(cols), regimes(cols)
    scored = {t: {"y": [], "slocast": [], "reference": []} for t in TARGETS}
    reference: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(Path(tmp))
        since_retrain = 0
        for lo in range(0, n, batch):
            rows_ = slice(lo, min(lo + batch, n))
            for target in TARGETS:
                y = cols[TARGET_COLUMNS[target]][rows_]
                seen = y > 0
                served = trainer.state.serving.get(target)
                if served is None or target not in reference or not seen.any():
                    continue
                x, g = features[rows_][seen], regime_ids[rows_][seen]
                scored[target]["y"].append(y[seen])
                scored[target]["slocast"].append(served.predict(x, g))
                scored[target]["reference"].append(reference[target].inplace_predict(x))
            trainer.ingest(SampleBatch(time.time(), {k: v[rows_] for k, v in cols.items()}))
            since_retrain += rows_.stop - rows_.start
            if since_retrain >= every:
                since_retrain = 0
                trainer.retrain_once()
                for target in TARGETS:
                    y = cols[TARGET_COLUMNS[target]][: rows_.stop]
                    seen = np.flatnonzero(y > 0)[-window:]
                    if seen.size >= trainer.settings.min_train_samples:
                        reference[target] = fit_reference(features[seen], y[seen], seed)
        versions = trainer.state.retrains["promoted"]
        recalibrations = trainer.recalibrations
    out = {"rows": n, "seconds": time.perf_counter() - started}
    for target in TARGETS:
        y = np.concatenate(scored[target]["y"])
        result = {"scored_rows": int(y.shape[0])}
        for name in ("slocast", "reference"):
            bound = np.concatenate(scored[target][name])
            result[name] = {
                "pinball": float(pinball_loss(y, bound, QUANTILE)),
                "coverage": float(coverage(y, bound)),
            }
        result["ratio"] = result["slocast"]["pinball"] / result["reference"]["pinball"]
        out[target] = result
    out["promotions"] = versions
    out["aci_recalibrations"] = recalibrations
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default=",".join(REGIME_NAMES))
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100, help="samples per posted batch")
    parser.add_argument("--retrain-every", type=int, default=500, help="samples between retrains")
    parser.add_argument("--reference-window", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {}
    for regime in args.regimes.split(","):
        result = replay(
            regime, args.rows, args.seed, args.batch, args.retrain_every, args.reference_window
        )
        report[regime] = result
        for target in TARGETS:
            r = result[target]
            print(
                f"{regime:14s} {target}  ratio {r['ratio']:.3f}  coverage slocast "
                f"{r['slocast']['coverage']:.3f} reference {r['reference']['coverage']:.3f}  "
                f"({r['scored_rows']} rows)",
                flush=True,
            )
        print(
            f"{regime:14s} promotions {result['promotions']}, ACI recalibrations "
            f"{result['aci_recalibrations']}, {result['seconds']:.0f} s",
            flush=True,
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
