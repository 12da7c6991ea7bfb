"""Served forecasts are the evaluator's offline forecasts for the same test windows."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.features import target_times
from slocast.core.schema import TARGET_COLUMNS

WINDOWS = 64


@pytest.fixture(scope="module")
def offline(server, tmp_path_factory):
    """The champion bundle, its processed dataset and the evaluator's forecasts."""
    if server.home is None:
        pytest.skip("needs the serving test's own SLOCAST_HOME (dataset store)")
    from slocast.adapters.storage import LocalStore
    from slocast.evaluate.scoring import forecast_test
    from slocast.models.bundle import load_bundle
    from slocast.preprocess.store import load_dataset

    registry = server.registry()
    ref = registry.champion(server.task)
    bundle = load_bundle(registry.download(ref, tmp_path_factory.mktemp("bundle")))
    data = load_dataset(LocalStore(server.home / "artifacts"), ref.dataset_id)
    return ref, bundle, data, forecast_test(bundle, data)


def test_served_equals_offline(server, model_info, offline, make_history) -> None:
    ref, bundle, data, forecast = offline
    prediction = forecast.prediction
    assert model_info["version"] == ref.version
    ends = data.ends("test")
    pick = np.unique(np.linspace(0, ends.size - 1, WINDOWS).astype(int))
    rows = bundle.forecaster.history_rows
    series = [
        {"id": int(i), "history": make_history(data.times[e - rows : e], data.values[e - rows : e])}
        for i, e in zip(pick, ends[pick], strict=True)
    ]
    horizon = bundle.spec.horizon
    levels = bundle.calibration.levels
    with server.client() as client:
        response = client.post(
            "/v1/forecast/batch",
            json={"series": series, "horizon": horizon, "quantiles": levels},
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]

    served = np.array(
        [[[s["point"][t] for t in TARGET_COLUMNS] for s in r["forecasts"]] for r in results]
    )
    expected = prediction[pick]
    # The evaluator runs XGBoost itself; the server may run the compiled library,
    # whose float32 sums differ in the last bits. Everything else is exact.
    # Compared per target in units of its largest forecast, so near-zero values of
    # a target whose scale is 1e8 are not held to a relative tolerance.
    scale = np.maximum(np.abs(expected).max(axis=(0, 1)), 1e-300)
    compiled = model_info.get("engine") == "compiled"
    rtol, atol = (1e-4, 1e-6) if compiled else (1e-12, 0.0)
    np.testing.assert_allclose(served / scale, expected / scale, rtol=rtol, atol=atol)
    for q in levels:
        upper = np.array(
            [
                [[s["quantiles"][f"{q:g}"][t] for t in TARGET_COLUMNS] for s in r["forecasts"]]
                for r in results
            ]
        )
        np.testing.assert_allclose(
            upper / scale,
            forecast.uppers[q][pick] / scale,
            rtol=rtol,
            atol=atol,
        )
    times = target_times(data.times, ends[pick], horizon, bundle.spec.step_seconds)
    served_times = np.array(
        [[np.datetime64(s["time"], "ns") for s in r["forecasts"]] for r in results]
    )
    np.testing.assert_array_equal(served_times, times)
