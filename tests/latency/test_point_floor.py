"""The point floor: a model never serves a point below a low quantile of its training targets.

A mean model's additive trees can predict below zero for rows hardly any training row was
that fast (the TTFT default did on ShareGPT, a bound of 0 ms). Here the data make
that certain: latency is ~30 ms unless two load features are both high (+1,000 ms),
and stumps (depth 1) can only add the two effects, so the low/low corner is
predicted far below zero. Its bound must be the floor plus its offset, the offsets
calibrated on clipped points, offline and served alike; bundles written before the
floor existed load with a floor of 0.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from slocast.core.digests import sha256_file
from slocast.latency import model as m
from slocast.latency.bundle import MANIFEST, publish, read_pointer, write_bundle
from slocast.latency.features import FEATURE_NAMES
from slocast.latency.serving import load_served_model
from slocast.settings import LATENCY_ENGINES

STUMPS = m.TreeParams(
    objective="squared",
    n_estimators=200,
    max_depth=1,
    learning_rate=0.1,
    subsample=1.0,
    colsample_bytree=1.0,
)
INFO = {"model_type": "xgboost", "objective_type": "t", "quantile": 0.9}
# Two increasing load features (input_token_length, num_request_waiting).
A, B = 1, 2


def and_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, len(FEATURE_NAMES)), dtype=np.float32)
    both = (x[:, A] > 0.5) & (x[:, B] > 0.5)
    y = 30.0 * (1.0 + 0.2 * rng.random(n)) + 1000.0 * both
    return x, y, np.zeros(n, np.int64)


def below_floor(model: m.TargetModel, x: np.ndarray) -> np.ndarray:
    """Rows whose trees' point is below the floor: the low/low corner, about a quarter."""
    low = m.predict_booster(model.booster, x, "squared") < model.point_floor_ms
    assert 0.2 < low.mean() < 0.3
    return low


def fit(how: str, x: np.ndarray, y: np.ndarray, r: np.ndarray) -> tuple[m.TargetModel, np.ndarray]:
    """A model fitted ``how``, and the rows its floor may come from."""
    if how == "split":
        cut = int(0.8 * y.shape[0])
        model = m.fit_target_model(
            "ttft", x[:cut], y[:cut], x[cut:], y[cut:], r[cut:], 0.9, STUMPS, seed=0
        )
        return model, y[:cut]
    model, _ = m.fit_selected("ttft", x, y, r, 0.9, (STUMPS,), seed=0)
    return model, y


@pytest.fixture(scope="module")
def fresh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return and_data(3000, seed=1)


@pytest.fixture(scope="module")
def split_model() -> m.TargetModel:
    return fit("split", *and_data(5000, seed=0))[0]


@pytest.mark.parametrize("how", ["split", "selected"])
def test_points_below_the_floor_get_the_floor_plus_its_offset(how: str, fresh) -> None:
    model, training_y = fit(how, *and_data(5000, seed=0))
    x, y, r = fresh
    low = below_floor(model, x)
    assert (m.predict_booster(model.booster, x[low], "squared") < 0).mean() > 0.9
    assert model.point_floor_ms == np.quantile(training_y, m.POINT_FLOOR_QUANTILE)
    offset = model.calibration.offsets_for(r[low])
    bound = model.predict(x[low], r[low])
    np.testing.assert_allclose(bound, model.point_floor_ms * (1.0 + offset))
    # Calibrated on clipped points: an unclipped point's residual over a 1 µs scale
    # would set an offset of ~1e5 and a bound of seconds for every row.
    assert (bound > 30.0).all() and (bound < 60.0).all()
    assert np.mean(y[low] <= bound) > 0.85
    assert abs(np.mean(y <= model.predict(x, r)) - 0.9) < 0.03
    np.testing.assert_array_equal(model.point(x[low]), model.point_floor_ms)


def publish_models(model_dir: Path, model: m.TargetModel) -> None:
    models = {target: replace(model, target=target) for target in m.TARGETS}
    publish(model_dir, write_bundle(model_dir, models, INFO))


@pytest.mark.parametrize("engine", LATENCY_ENGINES)
def test_served_bound_equals_the_offline_one_on_clipped_rows(
    split_model, fresh, engine: str, tmp_path: Path
) -> None:
    publish_models(tmp_path, split_model)
    served = load_served_model(tmp_path, read_pointer(tmp_path), engine)
    x, _, r = fresh
    for target in m.TARGETS:
        assert served.targets[target].engine.startswith(engine)
        assert served.targets[target].point_floor_ms == split_model.point_floor_ms
        bound = served.targets[target].predict(x, r)
        np.testing.assert_allclose(bound, split_model.predict(x, r), rtol=1e-6)
        low = below_floor(split_model, x)
        np.testing.assert_array_equal(bound[low], split_model.predict(x[low], r[low]))
        assert (bound[low] > split_model.point_floor_ms).all()  # floor + offset, not 0


def test_a_bundle_without_a_floor_loads_with_floor_zero(split_model, fresh, tmp_path: Path) -> None:
    publish_models(tmp_path, split_model)
    bundle = tmp_path / "bundles" / read_pointer(tmp_path).version
    manifest = json.loads((bundle / MANIFEST).read_text())
    for target in m.TARGETS:
        path = bundle / manifest["targets"][target]["calibration"]
        calib = json.loads(path.read_text())
        assert calib.pop("point_floor_ms") == split_model.point_floor_ms
        path.write_text(json.dumps(calib))  # as written before the floor existed
        manifest["files"][path.name] = sha256_file(path)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    publish(tmp_path, bundle)

    served = load_served_model(tmp_path, read_pointer(tmp_path), "xgboost")
    offline = m.load_target_model(bundle, "ttft", manifest["targets"]["ttft"])
    assert offline.point_floor_ms == served.targets["ttft"].point_floor_ms == 0.0
    x, _, r = fresh
    bound = served.targets["ttft"].predict(x, r)
    np.testing.assert_allclose(bound, offline.predict(x, r), rtol=1e-6)
    # The old bound of a negative point (0) to within offset x SCALE_FLOOR_MS.
    low = below_floor(split_model, x)
    offsets = offline.calibration.offsets_for(r[low])
    np.testing.assert_allclose(bound[low], offsets * m.SCALE_FLOOR_MS)
    # Rows whose point was positive: the bound the bundle served before.
    point = m.predict_booster(offline.booster, x[~low], "squared")
    before = m.upper_bound(point, offline.calibration, r[~low], -np.inf)
    np.testing.assert_allclose(bound[~low], before, rtol=1e-6)
