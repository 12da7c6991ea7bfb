"""Compiled trees (TL2cgen) and XGBoost agree on the served XGBoost champion."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def xgboost_champion(server, tmp_path_factory):
    if server.home is None:
        pytest.skip("needs the serving test's own SLOCAST_HOME")
    from slocast.adapters.storage import LocalStore
    from slocast.models.bundle import load_bundle
    from slocast.preprocess.store import load_dataset

    registry = server.registry()
    ref = registry.champion(server.task)
    if ref.family != "xgboost":
        pytest.skip(f"the champion is {ref.family}, not xgboost")
    bundle_dir = registry.download(ref, tmp_path_factory.mktemp("bundle"))
    data = load_dataset(LocalStore(server.home / "artifacts"), ref.dataset_id)
    return load_bundle(bundle_dir), bundle_dir, data


def test_compiled_and_xgboost_agree(server, xgboost_champion) -> None:
    from slocast.serve.tree_engine import load_tree_predictor

    bundle, bundle_dir, data = xgboost_champion
    # The server's compile cache: the libraries it built are verified and reused.
    cache = server.home / "serving" / "compiled"
    compiled = load_tree_predictor(bundle, bundle_dir, cache, engine="compiled")
    xgboost = load_tree_predictor(bundle, bundle_dir, cache, engine="xgboost")
    assert compiled.engine == "compiled", compiled.reason
    ends = data.ends("test")
    got = compiled.predict(data.times, data.values, ends)
    reference = xgboost.predict(data.times, data.values, ends)
    offline = bundle.forecaster.predict(data.times, data.values, ends)
    np.testing.assert_array_equal(reference, offline)  # same trees, same features, same finish
    # Relative per value, with an absolute floor of 1e-6 of each target's largest
    # forecast for values near zero.
    scale = np.maximum(np.abs(reference).max(axis=(0, 1)), 1e-300)
    np.testing.assert_allclose(got / scale, reference / scale, rtol=1e-4, atol=1e-6)


def test_engine_is_reported(model_info) -> None:
    if model_info["family"] != "xgboost":
        pytest.skip("not an xgboost champion")
    assert model_info["engine_configured"] == "compiled"  # the default
    assert model_info["engine"] == "compiled", model_info["engine_reason"]
    assert model_info["engine_reason"] is None


def test_served_trees_were_compiled_at_promotion(server, model_info) -> None:
    """The champion's libraries came with the bundle (built by the promotion), were
    verified against the registry and adopted: a server without a compiler serves
    compiled trees too."""
    if model_info["family"] != "xgboost":
        pytest.skip("not an xgboost champion")
    libraries = model_info["compiled_libraries"]
    assert libraries["rejected"] == []
    assert libraries["shipped"] == libraries["adopted"] == model_info["boosters"]
    if server.home is not None:  # our own fresh server: nothing was compiled here
        assert libraries["built_here"] == 0
    with server.client() as client:
        text = client.get("/metrics").text
    assert "slocast_compiled_libraries_rejected_total 0.0" in text
