"""CompiledBatch (TL2cgen's C API without per-call Python) equals tl2cgen.Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from slocast.core import compiled_trees as ct

N_FEATURES = 8


@pytest.fixture(scope="module")
def predictors(tmp_path_factory: pytest.TempPathFactory):
    tl2cgen = pytest.importorskip("tl2cgen")
    rng = np.random.default_rng(0)
    x = rng.random((1500, N_FEATURES), dtype=np.float32)
    root = tmp_path_factory.mktemp("batch")
    lib_dir = root / "lib"
    out = []
    for k in range(3):
        y = k + 10 * x[:, k] - 5 * x[:, k + 1] * x[:, k + 2] + rng.normal(0, 0.1, len(x))
        booster = xgb.train(
            {"objective": "reg:squarederror", "max_depth": 3, "nthread": 1},
            xgb.DMatrix(x, label=y),
            25,
        )
        path = root / f"model{k}.json"
        booster.save_model(path)
        model = ct.load_tree_model(path, lib_dir)
        assert model.engine == ct.ENGINE_TL2CGEN
        library = ct.library_paths(model.model_sha256, lib_dir).library
        out.append((tl2cgen.Predictor(library, nthread=1), booster))
    return out


@pytest.mark.parametrize("rows", [1, 7, 500])
def test_batch_equals_tl2cgen_and_xgboost(predictors, rows: int) -> None:
    import tl2cgen

    batch = ct.CompiledBatch([p for p, _ in predictors])
    x = np.random.default_rng(rows).random((rows, N_FEATURES), dtype=np.float32)
    x[0, 1] = np.nan  # missing values take the default branch in both
    got = batch.predict(x)
    assert got.shape == (len(predictors), rows)
    dmat = tl2cgen.DMatrix(x)
    for i, (predictor, booster) in enumerate(predictors):
        np.testing.assert_array_equal(got[i], predictor.predict(dmat).reshape(-1))
        np.testing.assert_allclose(got[i], booster.inplace_predict(x), rtol=1e-4, atol=1e-6)
    # Outputs are written into zeroed memory on every call: no accumulation.
    np.testing.assert_array_equal(batch.predict(x), got)


def test_batch_checks_its_input(predictors) -> None:
    batch = ct.CompiledBatch([p for p, _ in predictors])
    assert batch.predict(np.empty((0, N_FEATURES), np.float32)).shape == (len(predictors), 0)
    with pytest.raises(ValueError):
        batch.predict(np.zeros((2, N_FEATURES + 1), np.float32))
    # float64 input is converted, not misread
    x = np.random.default_rng(9).random((4, N_FEATURES))
    np.testing.assert_array_equal(batch.predict(x), batch.predict(x.astype(np.float32)))
