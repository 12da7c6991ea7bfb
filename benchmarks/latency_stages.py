"""CPU per stage of one latency prediction call, in-process (no HTTP).

Builds the benchmark bundle of ``latency_serve.py`` (synthetic extreme-contention
samples), loads it on the configured engine and times each stage of the request
path for a 1000-candidate bulk body and a single ``/predict`` body: thread CPU
time, best of five repetitions. Usage:

    python benchmarks/latency_stages.py [--engine native|xgboost] [--rows 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import msgspec

from slocast.latency import schema
from slocast.latency.bundle import read_pointer
from slocast.latency.features import build_features, regimes
from slocast.latency.http_common import encode_json
from slocast.latency.prediction_app import BulkStrictResponse, predictions
from slocast.latency.serving import load_served_model
from slocast.latency.synthetic import generate, to_records
from slocast.settings import LATENCY_ENGINES

sys.path.insert(0, str(Path(__file__).parent))
from cpu_timing import best_cpu_seconds  # noqa: E402
from latency_serve import build_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=LATENCY_ENGINES, default="native")
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    model_dir = Path(tempfile.mkdtemp(prefix="latency-stages-"))
    build_bundle(model_dir, generate("extreme-contention", 20_000, seed=0))
    model = load_served_model(model_dir, read_pointer(model_dir), args.engine)
    items = to_records(generate("extreme-contention", args.rows, seed=3))
    for item in items:
        del item["actual_ttft_ms"], item["actual_tpot_ms"]
    body = msgspec.json.encode({"requests": items})
    one = msgspec.json.encode(items[0])
    cols = schema.decode_bulk(body)
    x, regime_ids = build_features(cols), regimes(cols)
    bounds = model.predict(cols)
    rows = predictions(model, bounds)
    calls = max(10, 50_000 // args.rows)

    def whole() -> bytes:
        out = predictions(model, model.predict(schema.decode_bulk(body)))
        return encode_json(BulkStrictResponse(out, len(out), len(out), 0, 0.0))

    stages = {
        "body -> columns (msgspec Structs)": lambda: schema.decode_bulk(body),
        "features + regimes": lambda: (build_features(cols), regimes(cols)),
        **{
            f"{name} trees + bound ({target.engine})": (
                lambda target=target: target.predict(x, regime_ids)
            )
            for name, target in model.targets.items()
        },
        "response (Structs + encode)": lambda: encode_json(
            BulkStrictResponse(predictions(model, bounds), len(rows), len(rows), 0, 0.0)
        ),
        "total": whole,
    }
    print(f"{args.rows} rows, engine {args.engine}: ms of thread CPU per call (best of 5)")
    for label, fn in stages.items():
        print(f"  {label:40s} {1000 * best_cpu_seconds(fn, calls):7.3f}")
    single = 1000 * best_cpu_seconds(
        lambda: encode_json(predictions(model, model.predict(schema.decode_request(one)))[0]),
        1000,
    )
    print(f"  {'/predict (one row), total':40s} {single:7.3f}")


if __name__ == "__main__":
    main()
