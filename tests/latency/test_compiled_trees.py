"""Compiled trees agree with XGBoost, are verified, cached and fall back loudly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from slocast.core import compiled_trees as ct


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
def compiled(
    booster_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ct.TreeModel]:
    lib_dir = tmp_path_factory.mktemp("lib")
    return lib_dir, ct.load_tree_model(booster_file, lib_dir)


def test_compiled_agrees_with_xgboost(compiled) -> None:
    _, model = compiled
    assert model.engine == ct.ENGINE_TL2CGEN
    x = np.random.default_rng(1).random((500, 6), dtype=np.float32)
    native = model.predict_with(ct.ENGINE_TL2CGEN, x)
    reference = model.predict_with(ct.ENGINE_XGBOOST, x)
    np.testing.assert_allclose(native, reference, rtol=1e-4)
    assert np.ptp(native) > 1.0  # a real model, not a constant


def test_manifest_records_hashes_and_toolchain(compiled, booster_file: Path) -> None:
    lib_dir, model = compiled
    paths = ct.library_paths(model.model_sha256, lib_dir)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["model_sha256"] == ct.sha256_file(booster_file)
    assert manifest["library_sha256"] == ct.sha256_file(paths.library)
    assert {"gcc", "platform", "python", "treelite", "tl2cgen"} <= set(manifest["toolchain"])


def test_cached_library_is_reused(compiled, booster_file: Path, monkeypatch) -> None:
    lib_dir, _ = compiled

    def no_compile(*_args, **_kwargs):
        raise AssertionError("a verified cached library must not be recompiled")

    monkeypatch.setattr(ct, "compile_booster", no_compile)
    assert ct.load_tree_model(booster_file, lib_dir).engine == ct.ENGINE_TL2CGEN


def test_tampered_library_is_rebuilt(booster_file: Path, tmp_path: Path) -> None:
    first = ct.load_tree_model(booster_file, tmp_path)
    library = ct.library_paths(first.model_sha256, tmp_path).library
    # Replace (never rewrite in place: the loaded library is memory-mapped).
    tampered = library.with_suffix(".tmp")
    tampered.write_bytes(library.read_bytes() + b"tampered")
    tampered.replace(library)
    assert ct.verified_library(first.model_sha256, tmp_path) is None
    again = ct.load_tree_model(booster_file, tmp_path)
    assert again.engine == ct.ENGINE_TL2CGEN
    manifest = json.loads(ct.library_paths(first.model_sha256, tmp_path).manifest.read_text())
    assert ct.sha256_file(library) == manifest["library_sha256"]


def test_other_platform_triggers_local_build(booster_file: Path, tmp_path: Path) -> None:
    first = ct.load_tree_model(booster_file, tmp_path)
    paths = ct.library_paths(first.model_sha256, tmp_path)
    manifest = json.loads(paths.manifest.read_text())
    manifest["toolchain"]["platform"] = "darwin-arm64"
    paths.manifest.write_text(json.dumps(manifest))
    assert ct.verified_library(first.model_sha256, tmp_path) is None
    assert ct.load_tree_model(booster_file, tmp_path).engine == ct.ENGINE_TL2CGEN


def test_fallback_to_xgboost_is_named(booster_file: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(ct, "compile_booster", broken)
    model = ct.load_tree_model(booster_file, tmp_path)
    assert model.engine == ct.ENGINE_XGBOOST
    x = np.random.default_rng(2).random((3, 6), dtype=np.float32)
    assert model.predict(x).shape == (3,)


def test_wrong_model_hash_is_refused(booster_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ct.load_tree_model(booster_file, tmp_path, expected_sha256="0" * 64)
