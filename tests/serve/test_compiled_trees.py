"""TL2cgen libraries: equal to XGBoost, recorded in a manifest, cached and verified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tl2cgen
import xgboost as xgb

from slocast.adapters import compiled_trees as ct
from slocast.core.digests import sha256_file


@pytest.fixture(scope="module")
def booster_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((2000, 6), dtype=np.float32)
    y = 50 + 100 * x[:, 0] + 20 * x[:, 1] * x[:, 2] + rng.gamma(4, 5, 2000)
    booster = xgb.train(
        {"objective": "reg:quantileerror", "quantile_alpha": 0.9, "max_depth": 4, "nthread": 1},
        xgb.DMatrix(x, label=y),
        40,
    )
    path = tmp_path_factory.mktemp("trees") / "model.ubj"
    booster.save_model(path)
    return path


@pytest.fixture(scope="module")
def compiled(booster_file: Path, tmp_path_factory: pytest.TempPathFactory):
    lib_dir = tmp_path_factory.mktemp("lib")
    return lib_dir, ct.ensure_compiled(booster_file, lib_dir)


def test_compiled_agrees_with_xgboost(compiled, booster_file: Path) -> None:
    _, paths = compiled
    x = np.random.default_rng(1).random((500, 6), dtype=np.float32)
    predictor = tl2cgen.Predictor(paths.library, nthread=1)
    native = np.asarray(predictor.predict(tl2cgen.DMatrix(x))).reshape(-1)
    reference = xgb.Booster(model_file=str(booster_file)).inplace_predict(x)
    np.testing.assert_allclose(native, reference, rtol=1e-4)
    assert np.ptp(native) > 1.0  # a real model, not a constant


def test_manifest_records_hashes_and_toolchain(compiled, booster_file: Path) -> None:
    _, paths = compiled
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["model_sha256"] == sha256_file(booster_file)
    assert manifest["library_sha256"] == sha256_file(paths.library)
    assert {"gcc", "platform", "python", "treelite", "tl2cgen"} <= set(manifest["toolchain"])


def test_cached_library_is_reused(compiled, booster_file: Path, monkeypatch) -> None:
    lib_dir, paths = compiled

    def no_compile(*_args, **_kwargs):
        raise AssertionError("a verified cached library must not be recompiled")

    monkeypatch.setattr(ct, "compile_booster", no_compile)
    assert ct.ensure_compiled(booster_file, lib_dir).library == paths.library


def test_tampered_library_is_rebuilt(booster_file: Path, tmp_path: Path) -> None:
    paths = ct.ensure_compiled(booster_file, tmp_path)
    model_sha = sha256_file(booster_file)
    # Replace (never rewrite in place: a loaded library is memory-mapped).
    tampered = paths.library.with_suffix(".tmp")
    tampered.write_bytes(paths.library.read_bytes() + b"tampered")
    tampered.replace(paths.library)
    assert ct.verified_library(model_sha, tmp_path) is None
    again = ct.ensure_compiled(booster_file, tmp_path)
    assert sha256_file(again.library) == json.loads(again.manifest.read_text())["library_sha256"]
    assert ct.verified_library(model_sha, tmp_path) == again.library


def test_library_built_elsewhere_is_not_trusted(booster_file: Path, tmp_path: Path) -> None:
    paths = ct.ensure_compiled(booster_file, tmp_path)
    manifest = json.loads(paths.manifest.read_text())
    manifest["toolchain"]["platform"] = "darwin-arm64"
    paths.manifest.write_text(json.dumps(manifest))
    assert ct.verified_library(sha256_file(booster_file), tmp_path) is None
