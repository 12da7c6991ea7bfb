"""The served model on its tree engines (slocast.latency.native, serving).

- Served bounds equal the offline models' on both engines (``native``, ``xgboost``);
  the regime-offset gather equals ``model.upper_bound`` exactly.
- A model the native engine cannot serve is served by XGBoost, and counted.
- Bundles carry the XGBoost models and calibration only: no native code.
- The response Structs encode to the upstream objects.

The kernel itself is tested on arrays in tests/native.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import msgspec
import numpy as np
import pytest
import xgboost as xgb

from slocast.latency import native
from slocast.latency.bundle import MANIFEST, publish, read_pointer, write_bundle
from slocast.latency.features import FEATURE_NAMES, build_features, regimes
from slocast.latency.model import (
    TARGET_COLUMNS,
    TARGET_PARAMS,
    TARGETS,
    TargetModel,
    fit_target_model,
    point_from_raw,
    upper_bound,
)
from slocast.latency.serving import ModelHolder, load_served_model
from slocast.latency.synthetic import generate
from slocast.settings import LATENCY_ENGINES

INFO = {"model_type": "xgboost", "objective_type": "t", "quantile": 0.9}


# TTFT with additive offsets (one fixed scale), TPOT with relative ones: the served
# path must reproduce both normalisations.
SERVED_PARAMS = {
    "ttft": replace(TARGET_PARAMS["ttft"], normalise="additive"),
    "tpot": TARGET_PARAMS["tpot"],
}


def fitted_models(n: int = 6000) -> dict[str, TargetModel]:
    cols = generate("extreme-contention", n, seed=0)
    x, regime_ids = build_features(cols), regimes(cols)
    models = {}
    for target in TARGETS:
        y = cols[TARGET_COLUMNS[target]]
        rows = (y > 0).nonzero()[0]
        cut = int(0.8 * rows.shape[0])
        fit, cal = rows[:cut], rows[cut:]
        models[target] = fit_target_model(
            target, x[fit], y[fit], x[cal], y[cal], regime_ids[cal], 0.9, SERVED_PARAMS[target], 0
        )
    return models


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, TargetModel], Path]:
    models = fitted_models()
    model_dir = tmp_path_factory.mktemp("served") / "models"
    publish(model_dir, write_bundle(model_dir, models, INFO))
    return models, model_dir


@pytest.mark.parametrize("engine", LATENCY_ENGINES)
def test_served_bounds_equal_the_offline_models(published, engine: str) -> None:
    models, model_dir = published
    model = load_served_model(model_dir, read_pointer(model_dir), engine)
    assert all(e.startswith(engine) for e in model.engines.values()), model.engines
    fresh = generate("extreme-contention", 3000, seed=8)
    x, regime_ids = build_features(fresh), regimes(fresh)
    bounds = model.predict(fresh)
    assert model.targets["ttft"].calibration.fixed_scale is not None
    assert model.targets["tpot"].calibration.fixed_scale is None
    for target in TARGETS:
        offline = models[target].predict(x, regime_ids)
        np.testing.assert_allclose(bounds[target], offline, rtol=1e-6)
        # the regime-offset table is upper_bound exactly, on the same points
        served = model.targets[target]
        point = point_from_raw(served.forest.predict(x).astype(np.float64), served.objective)
        np.testing.assert_array_equal(
            bounds[target],
            upper_bound(point, served.calibration, regime_ids, served.point_floor_ms),
        )


def test_native_and_xgboost_engines_agree_exactly(published) -> None:
    _, model_dir = published
    pointer = read_pointer(model_dir)
    fast = load_served_model(model_dir, pointer, native.ENGINE_NATIVE)
    reference = load_served_model(model_dir, pointer, native.ENGINE_XGBOOST)
    fresh = generate("long-prompts", 2000, seed=9)
    for target, bound in fast.predict(fresh).items():
        np.testing.assert_array_equal(bound, reference.predict(fresh)[target], err_msg=target)


def test_a_forest_the_kernel_cannot_hold_falls_back_to_xgboost_counted(
    published, tmp_path: Path
) -> None:
    models, _ = published
    rng = np.random.default_rng(0)
    x = rng.random((2000, len(FEATURE_NAMES)), dtype=np.float32)
    deep = xgb.train(
        {"max_depth": native.MAX_DEPTH + 3, "min_child_weight": 0, "nthread": 1},
        xgb.DMatrix(x, label=rng.random(2000)),
        3,
    )
    model_dir = tmp_path / "models"
    served = {**models, "ttft": replace(models["ttft"], booster=deep)}
    publish(model_dir, write_bundle(model_dir, served, INFO))
    holder = ModelHolder(model_dir, native.ENGINE_NATIVE)
    assert holder.refresh()
    assert holder.current.engines["ttft"] == native.ENGINE_XGBOOST
    assert holder.current.engines["tpot"].startswith(native.ENGINE_NATIVE)
    assert holder.engine_fallbacks == 1
    bounds = holder.current.predict(generate("sharegpt-like", 50, seed=1))
    assert all(np.isfinite(b).all() for b in bounds.values())
    configured = ModelHolder(model_dir, native.ENGINE_XGBOOST)
    assert configured.refresh() and configured.engine_fallbacks == 0  # chosen, not a fallback
    publish(model_dir, write_bundle(model_dir, models, INFO))  # a model it can hold
    assert holder.refresh() and holder.engine_fallbacks == 0


def test_bundles_carry_models_and_calibration_only(published) -> None:
    _, model_dir = published
    pointer = read_pointer(model_dir)
    manifest = json.loads((model_dir / "bundles" / pointer.version / MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(
        f"{t}.{kind}" for t in TARGETS for kind in ("ubj", "calibration.json")
    )


def test_prediction_structs_encode_to_the_upstream_objects(published) -> None:
    from slocast.latency.prediction_app import predictions

    _, model_dir = published
    model = load_served_model(model_dir, read_pointer(model_dir), native.ENGINE_NATIVE)
    bounds = model.predict(generate("sharegpt-like", 257, seed=3))
    bounds["tpot"][3] = np.nan  # encoded as null, as orjson and upstream's json did
    decoded = msgspec.json.decode(msgspec.json.encode(predictions(model, bounds)))
    assert len(decoded) == 257
    assert list(decoded[0]) == [
        "ttft_ms",
        "tpot_ms",
        "predicted_at",
        "model_type",
        "objective_type",
        "quantile",
        "last_model_load",
        "cold",
    ]
    assert [d["ttft_ms"] for d in decoded] == bounds["ttft"].tolist()
    assert decoded[3]["tpot_ms"] is None
    assert {d["cold"] for d in decoded} == {False} and decoded[0]["quantile"] == 0.9
