"""GRU/LSTM forecasters on small synthetic data: learning, export, persistence, serving."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from slocast.core.config import PipelineConfig  # noqa: E402
from slocast.core.metrics import nrmse  # noqa: E402
from slocast.core.synthetic import generate_lte  # noqa: E402
from slocast.models import family_class  # noqa: E402
from slocast.models.baselines import Persistence  # noqa: E402
from slocast.models.recurrent import (  # noqa: E402
    NORM_MARGIN,
    GRUForecaster,
    LSTMForecaster,
    RecurrentForecaster,
    RecurrentParams,
    member_seeds,
)
from slocast.preprocess.stage import preprocess  # noqa: E402

# Small and quick, but enough epochs that early stopping, not the cap, ends the fit.
PARAMS = RecurrentParams(
    hidden=24, batch_size=128, learning_rate=5e-3, max_epochs=30, patience=3, instance_norm=False
)
FAMILIES = {"gru": GRUForecaster, "lstm": LSTMForecaster}
SERVICES = Path(__file__).resolve().parents[2] / "services"


def _headline(truth: np.ndarray, pred: np.ndarray) -> float:
    scores = nrmse(truth[:, 0], pred[:, 0])
    return float((scores[3] + scores[4]) / 2)  # down, up in TARGET_COLUMNS order


@pytest.fixture(scope="module")
def data():
    return preprocess(generate_lte(4000, seed=3), None, PipelineConfig(recurrent_seeds=1))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fitted(request, data):
    model = FAMILIES[request.param](data.spec, PARAMS)
    report = model.fit(data, seed=0)
    return model, report


def test_registry_resolves_both_families():
    assert family_class("gru") is GRUForecaster
    assert family_class("lstm") is LSTMForecaster


def test_beats_persistence_on_held_out_windows(data, fitted):
    model, _ = fitted
    ends = data.ends("test")
    truth = data.truth(ends)
    ours = _headline(truth, model.predict(data.times, data.values, ends))
    naive = _headline(truth, Persistence(data.spec).predict(data.times, data.values, ends))
    assert ours < naive


def test_predictions_vary_across_windows(data, fitted):
    model, _ = fitted
    pred = model.predict(data.times, data.values, data.ends("test"))
    assert np.all(pred.std(axis=0) > 1e-3 * np.asarray(data.spec.target_scale))


def test_onnx_matches_torch(data, fitted):
    model, _ = fitted
    ends = data.ends("test")
    served = model.predict(data.times, data.values, ends)
    reference = model.predict_torch(data.times, data.values, ends)
    # Compared on the standardised scale, where every target has unit spread.
    scale = data.spec.scale_targets
    np.testing.assert_allclose(scale(served), scale(reference), rtol=1e-4, atol=1e-4)


def test_early_stopping_restores_best_epoch(data, fitted):
    model, report = fitted
    curve = report.curves["val_loss"]
    assert len(curve) < PARAMS.max_epochs, "patience, not the epoch cap, should end this fit"
    assert report.metrics["best_val_loss"] == min(curve)
    assert report.metrics["best_epoch"] == np.argmin(curve) + 1 < len(curve)
    # The served model's validation loss is the best recorded one, not the last.
    ends = data.ends("val")
    spec = data.spec
    err = spec.scale_targets(model.predict(data.times, data.values, ends)) - spec.scale_targets(
        data.truth(ends)
    )
    assert np.nanmean(err**2) == pytest.approx(min(curve), rel=1e-4)


def test_refit_trains_the_early_stopped_epochs_on_other_rows(data, fitted):
    model, report = fitted
    rows = data.ends("train")[: data.ends("train").size // 2]
    clone = model.refit(data, rows, seed=0)
    # No validation rows steer the refit: it runs exactly the epochs validation chose.
    assert clone._fit_info["epochs"] == report.metrics["best_epoch"]
    assert "best_val_loss" not in clone._fit_info
    ends = data.ends("test")
    a, b = (m.predict(data.times, data.values, ends) for m in (clone, model))
    assert np.isfinite(a).all() and not np.allclose(a, b)


def test_save_load_round_trip_without_pickle(data, fitted, tmp_path):
    model, _ = fitted
    files = model.save(tmp_path)
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".pickle", ".joblib"))]
    for name in files:
        if name.endswith(".npz"):
            with np.load(tmp_path / name, allow_pickle=False) as arrays:
                assert all(arrays[k].dtype != object for k in arrays.files)
        if name.endswith(".json"):
            json.loads((tmp_path / name).read_text())
    loaded = type(model).load(tmp_path, data.spec)
    ends = data.ends("test")
    np.testing.assert_array_equal(
        loaded.predict(data.times, data.values, ends), model.predict(data.times, data.values, ends)
    )
    np.testing.assert_array_equal(
        loaded.predict_torch(data.times, data.values, ends[:50]),
        model.predict_torch(data.times, data.values, ends[:50]),
    )


def test_serving_end_after_last_row(data, fitted):
    model, _ = fitted
    n = len(data.values)
    one = model.predict(data.times, data.values, np.array([n]))
    assert one.shape == (1, 1, 5) and np.isfinite(one).all()
    assert model.predict(data.times, data.values, np.array([], np.int64)).shape == (0, 1, 5)
    # A batch of one gives the same forecast as inside a large batch.
    many = model.predict(data.times, data.values, np.arange(n - 999, n + 1))
    np.testing.assert_allclose(many[-1], one[0], rtol=1e-5)


def test_load_and_predict_without_torch(data, fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path)
    n = len(data.values)
    np.save(tmp_path / "values.npy", data.values[-50:])
    np.save(tmp_path / "times.npy", data.times[-50:].astype(np.int64))
    expected = model.predict(data.times, data.values, np.array([n - 1, n]))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import json, numpy as np
        from pathlib import Path
        from slocast.core.features import FeatureSpec
        from slocast.models import family_class
        root = Path({str(tmp_path)!r})
        spec = FeatureSpec.from_dict(json.loads({json.dumps(data.spec.to_dict())!r}))
        model = family_class({model.family!r}).load(root, spec)
        values = np.load(root / "values.npy")
        times = np.load(root / "times.npy").astype("datetime64[ns]")
        np.save(root / "out.npy", model.predict(times, values, np.array([49, 50])))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"PYTHONPATH": str(SERVICES)})
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


@pytest.mark.parametrize("instance_norm", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_multi_step_horizon_and_determinism(family, instance_norm):
    data = preprocess(
        generate_lte(2500, seed=5), None, PipelineConfig(horizon=3, recurrent_seeds=1)
    )
    params = RecurrentParams(hidden=8, max_epochs=2, patience=1, instance_norm=instance_norm)
    first: RecurrentForecaster = FAMILIES[family](data.spec, params)
    second: RecurrentForecaster = FAMILIES[family](data.spec, params)
    first.fit(data, seed=7)
    second.fit(data, seed=7)
    ends = data.ends("test")
    pred = first.predict(data.times, data.values, ends)
    assert pred.shape == (ends.size, 3, 5) and np.isfinite(pred).all()
    assert first.predict(data.times, data.values, np.array([len(data.values)])).shape == (1, 3, 5)
    # Same seed, same data: bit-identical forecasts.
    np.testing.assert_array_equal(pred, second.predict(data.times, data.values, ends))


def test_instance_norm_forecasts_follow_a_level_it_never_saw(data, tmp_path):
    """Per-window normalisation: traffic x10 at serving time gives forecasts ~x10."""
    from slocast.core.schema import TARGET_INDEX
    from slocast.models.recurrent import model_inputs

    params = RecurrentParams(**{**PARAMS.__dict__, "instance_norm": True})
    model = GRUForecaster(data.spec, params)
    model.fit(data, seed=0)
    ends = data.ends("test")
    pred = model.predict(data.times, data.values, ends)
    assert _headline(data.truth(ends), pred) < 1.05 * _headline(
        data.truth(ends), Persistence(data.spec).predict(data.times, data.values, ends)
    )
    shifted = data.values.copy()
    shifted[:, list(TARGET_INDEX)] *= 10.0
    np.testing.assert_allclose(
        model.predict(data.times, shifted, ends), 10.0 * pred, rtol=0.02, atol=1e-6
    )
    # Served as evaluated: the saved bundle applies the same transform.
    model.save(tmp_path)
    loaded = GRUForecaster.load(tmp_path, data.spec)
    assert loaded.params.instance_norm
    np.testing.assert_allclose(loaded.predict(data.times, data.values, ends), pred, rtol=1e-6)
    # Without it, a window's inputs carry its absolute level.
    plain = model_inputs(data.spec, data.times, shifted, ends[:5])[0]
    assert not np.allclose(plain, model_inputs(data.spec, data.times, data.values, ends[:5])[0])


def test_params_saved_before_instance_norm_load_without_it():
    # Both families choose per site by default; old bundles were one network without it.
    assert GRUForecaster(None).params.instance_norm is None
    assert LSTMForecaster(None).params.instance_norm is None
    legacy = {k: v for k, v in PARAMS.__dict__.items() if k not in ("instance_norm", "seeds")}
    loaded = RecurrentParams.from_dict(legacy)
    assert loaded.instance_norm is False and loaded.seeds == 1


def test_member_seeds_are_disjoint_across_run_seeds():
    assert member_seeds(4, 1) == [4]
    runs = [set(member_seeds(s, 3)) for s in range(3)]
    assert all(len(r) == 3 for r in runs) and not (runs[0] & runs[1] or runs[1] & runs[2])


TINY = RecurrentParams(hidden=8, batch_size=256, max_epochs=3, patience=1)


@pytest.fixture(scope="module")
def seed_ensemble():
    data = preprocess(generate_lte(2500, seed=4), None, PipelineConfig(recurrent_seeds=3))
    model = GRUForecaster(data.spec, replace(TINY, instance_norm=True))
    report = model.fit(data, seed=1)
    return data, model, report


def test_a_seed_ensemble_serves_the_mean_of_its_members(seed_ensemble, tmp_path):
    import torch

    from slocast.models.recurrent import _torch_forecast

    data, model, report = seed_ensemble
    assert model.params.seeds == 3 and report.params["member_seeds"] == [3, 4, 5]
    assert len(model._fit_info["best_epochs"]) == 3
    ends = data.ends("test")
    one = replace(model.params, seeds=1)
    members = []
    for i in range(3):
        prefix = f"members.{i}."
        state = {
            k[len(prefix) :]: torch.from_numpy(v)
            for k, v in model._weights.items()
            if k.startswith(prefix)
        }
        members.append(_torch_forecast("GRU", data.spec, one, state, data.times, data.values, ends))
    # Different seeds, different networks; the served forecast is their mean.
    assert not np.allclose(members[0], members[1])
    served = model.predict(data.times, data.values, ends)
    scale = data.spec.scale_targets
    np.testing.assert_allclose(scale(served), scale(np.mean(members, axis=0)), rtol=1e-4, atol=1e-4)
    # One ONNX graph on disk, loaded and served like a single network.
    model.save(tmp_path)
    loaded = GRUForecaster.load(tmp_path, data.spec)
    np.testing.assert_array_equal(loaded.predict(data.times, data.values, ends), served)


def test_a_seed_ensemble_refits_every_member_with_its_own_epochs(seed_ensemble):
    data, model, _ = seed_ensemble
    clone = model.refit(data, data.ends("train")[:800], seed=1)
    assert clone.params.seeds == 3
    assert clone._fit_info["best_epochs"] == model._fit_info["best_epochs"]
    assert "best_val_loss" not in clone._fit_info


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("drop", [True, False])
def test_per_window_normalisation_is_chosen_on_validation_and_its_shifts(family, drop):
    """Each option is scored by its worst case over validation and level-shifted copies
    of it. With a level drop from validation on, or with none at all (a shift that may
    come after the data, which validation cannot show), per-window normalisation wins:
    it reads levels relative to the window, so its score barely moves under a shift,
    while the globally scaled network predicts the old level."""
    frame = generate_lte(3000, seed=6)
    if drop:
        frame.loc[int(0.6 * len(frame)) :, "up"] *= 0.1
    data = preprocess(frame, None, PipelineConfig(recurrent_seeds=1))
    model = FAMILIES[family](data.spec, TINY)
    report = model.fit(data, seed=0)
    m = report.metrics
    on, worst_on, worst_off = (
        m[f"val_nrmse_{name}"]
        for name in (
            "instance_norm_on",
            "shifted_worst_instance_norm_on",
            "shifted_worst_instance_norm_off",
        )
    )
    # The choice follows the worst-case scores, and it is what the model stores.
    assert model.params.instance_norm is not (worst_off < (1 - NORM_MARGIN) * worst_on)
    assert model.params.instance_norm, m
    assert worst_on <= 1.05 * on, m  # (nearly) scale-free
    assert worst_off > 1.5 * worst_on, m
    assert m["members"] == 1.0


def test_the_server_applies_the_same_per_window_transform(tmp_path):
    """A GRU bundle loaded as `slocast serve` loads it answers what the evaluator scored."""
    import orjson

    from slocast.adapters.registry import VersionRef
    from slocast.core.schema import FEATURE_COLUMNS, TARGET_COLUMNS
    from slocast.models.bundle import save_bundle
    from slocast.serve.forecasting import batch_body
    from slocast.serve.loading import build_served_model
    from slocast.serve.validation import parse_batch
    from slocast.settings import ServeSettings
    from slocast.train.stage import train_family

    data = preprocess(generate_lte(4000, seed=3), None, PipelineConfig(recurrent_seeds=2))
    trained = train_family(data, "gru", seed=0)
    # A seed ensemble (2 networks, one ONNX graph) whose normalisation was chosen on validation.
    assert trained.bundle.forecaster.params.seeds == 2
    assert trained.bundle.forecaster.params.instance_norm is not None
    save_bundle(trained.bundle, tmp_path / "bundle")
    settings = ServeSettings(
        home=tmp_path, tracking_uri="", task="t", admin_token=None, cache_dir=tmp_path / "cache"
    )
    served = build_served_model(
        VersionRef(task="t", version="1", run_id="r", source="", tags={}),
        tmp_path / "bundle",
        settings,
    )
    ends = data.ends("test")[::97]
    rows = served.rules.history_rows
    values = data.values.copy()
    values[:, FEATURE_COLUMNS.index("up")] *= 10.0  # a level the model never saw
    for series_values in (data.values, values):
        stamps = np.datetime_as_string(np.asarray(data.times, "datetime64[s]"), unit="s")
        series = [
            {
                "id": i,
                "history": [
                    {"time": str(t), **dict(zip(FEATURE_COLUMNS, map(float, row), strict=True))}
                    for t, row in zip(
                        stamps[e - rows : e], series_values[e - rows : e], strict=True
                    )
                ],
            }
            for i, e in enumerate(ends)
        ]
        body = orjson.dumps({"series": series, "horizon": 1})
        results = orjson.loads(batch_body(served, parse_batch(body, served.rules))[0])["results"]
        got = np.array([[r["forecasts"][0]["point"][t] for t in TARGET_COLUMNS] for r in results])
        expected = trained.bundle.forecaster.predict(data.times, series_values, ends)[:, 0]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
