"""Compiled trees built at promotion: stored beside the bundle, verified before use.

Covers the server-side rules of ``models/compiled_bundle.py`` and
``serve/tree_engine.py`` on a small XGBoost bundle: shipped libraries are adopted
only when index, library, booster and platform all verify; a tampered or missing
artifact is compiled locally (and cached by hash); when nothing can be compiled
XGBoost serves, visibly, with its reason. ``test_promotion_ships_compiled_trees`` checks the
registry side through ``evaluate.stage.promote``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slocast.adapters import compiled_trees as ct
from slocast.core.config import PipelineConfig
from slocast.core.digests import sha256_bytes
from slocast.core.synthetic import generate_lte
from slocast.models.bundle import load_bundle, save_bundle
from slocast.models.compiled_bundle import (
    COMPILED_DIR,
    INDEX,
    TAG_COMPILED_INDEX,
    compile_bundle,
)
from slocast.preprocess.stage import preprocess
from slocast.serve.tree_engine import TreePredictor, load_tree_predictor
from slocast.train.stage import train_family

pytest.importorskip("tl2cgen")


@pytest.fixture(scope="module")
def dataset():
    return preprocess(generate_lte(1500, seed=3), None, PipelineConfig())


@pytest.fixture(scope="module")
def promoted(dataset, tmp_path_factory) -> tuple[Path, str]:
    """A saved XGBoost bundle compiled as promotion compiles it, and its index hash."""
    model = train_family(dataset, "xgboost", seed=0)
    root = tmp_path_factory.mktemp("promoted") / "bundle"
    save_bundle(model.bundle, root)
    index_sha = compile_bundle(root, load_bundle(root))
    assert index_sha is not None
    return root, index_sha


@pytest.fixture
def bundle_dir(promoted, tmp_path) -> Path:
    """A private copy of the promoted bundle that a test may tamper with."""
    copy = tmp_path / "bundle"
    shutil.copytree(promoted[0], copy)
    return copy


def _load(
    bundle_dir: Path, cache: Path, index_sha: str | None, engine: str = "compiled"
) -> TreePredictor:
    return load_tree_predictor(
        load_bundle(bundle_dir), bundle_dir, cache, engine=engine, compiled_index_sha256=index_sha
    )


def _index(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / COMPILED_DIR / INDEX).read_text())


def _forecast(predictor: TreePredictor, dataset) -> np.ndarray:
    assert predictor.engine == "compiled"
    ends = dataset.ends("test")[:50]
    return predictor.predict(dataset.times, dataset.values, ends)


def test_promotion_artifacts_record_hashes_and_toolchain(promoted) -> None:
    root, index_sha = promoted
    data = (root / COMPILED_DIR / INDEX).read_bytes()
    assert sha256_bytes(data) == index_sha
    index = json.loads(data)
    manifest = json.loads((root / "manifest.json").read_text())["files"]
    assert set(index["libraries"]) == {n for n in manifest if n.startswith("xgb_")}
    assert {"gcc", "platform", "libc", "treelite", "tl2cgen"} <= set(index["toolchain"])
    for file, entry in index["libraries"].items():
        assert entry["model_sha256"] == manifest[file]
        library_manifest = json.loads((root / COMPILED_DIR / entry["manifest"]).read_text())
        assert library_manifest["library_sha256"] == entry["library_sha256"]
        assert library_manifest["toolchain"]["platform"] == index["toolchain"]["platform"]


def test_verified_libraries_are_adopted_not_rebuilt(promoted, bundle_dir, tmp_path, dataset):
    predictor = _load(bundle_dir, tmp_path / "cache", promoted[1])
    boosters = len(_index(bundle_dir)["libraries"])
    assert predictor.engine == "compiled" and not predictor.fallback
    assert predictor.adoption.adopted == boosters and not predictor.adoption.rejected
    assert predictor.built_here == 0
    assert "kernels" not in _index(bundle_dir)  # trees only: no C source in a model
    xgboost = _load(bundle_dir, tmp_path / "cache", promoted[1], engine="xgboost")
    assert xgboost.engine == "xgboost" and not xgboost.fallback
    assert xgboost.describe()["engine_reason"] is None
    ends = dataset.ends("test")[:50]
    reference = xgboost.predict(dataset.times, dataset.values, ends)
    offline = load_bundle(bundle_dir).forecaster.predict(dataset.times, dataset.values, ends)
    np.testing.assert_array_equal(reference, offline)  # native features == NumPy's
    np.testing.assert_allclose(_forecast(predictor, dataset), reference, rtol=1e-4)


def test_tampered_library_is_rejected_and_compiled_here(promoted, bundle_dir, tmp_path, dataset):
    entry = next(iter(_index(bundle_dir)["libraries"].values()))
    library = bundle_dir / COMPILED_DIR / entry["library"]
    library.write_bytes(library.read_bytes() + b"\0")  # still loads; no longer what was built
    predictor = _load(bundle_dir, tmp_path / "cache", promoted[1])
    assert len(predictor.adoption.rejected) == 1
    assert "SHA-256" in predictor.adoption.rejected[0]
    assert predictor.built_here == 1  # only the rejected booster
    assert predictor.engine == "compiled"
    reference = _load(promoted[0], tmp_path / "clean-cache", promoted[1])
    np.testing.assert_array_equal(_forecast(predictor, dataset), _forecast(reference, dataset))


def test_library_and_manifest_swapped_together_fail_the_registry_hash(
    promoted, bundle_dir, tmp_path
):
    """Rewriting library, its manifest and the index consistently still changes the
    index hash, which the registry recorded at promotion."""
    index = _index(bundle_dir)
    file, entry = next(iter(index["libraries"].items()))
    library = bundle_dir / COMPILED_DIR / entry["library"]
    library.write_bytes(library.read_bytes() + b"\0")
    from slocast.core.digests import sha256_file

    entry["library_sha256"] = sha256_file(library)
    manifest_path = bundle_dir / COMPILED_DIR / entry["manifest"]
    manifest = json.loads(manifest_path.read_text())
    manifest["library_sha256"] = entry["library_sha256"]
    manifest_path.write_text(json.dumps(manifest))
    (bundle_dir / COMPILED_DIR / INDEX).write_text(json.dumps(index))
    predictor = _load(bundle_dir, tmp_path / "cache", promoted[1])
    assert predictor.adoption.adopted == 0
    assert predictor.adoption.rejected == [
        "compiled/index.json does not match the registry's SHA-256"
    ]
    assert predictor.built_here == len(index["libraries"])


def test_untagged_version_does_not_trust_shipped_libraries(promoted, bundle_dir, tmp_path):
    predictor = _load(bundle_dir, tmp_path / "cache", None)
    assert predictor.adoption.adopted == 0 and len(predictor.adoption.rejected) == 1
    assert predictor.built_here == predictor.adoption.shipped
    assert predictor.engine == "compiled"


def test_missing_artifact_is_compiled_here_once_and_cached(promoted, bundle_dir, tmp_path):
    shutil.rmtree(bundle_dir / COMPILED_DIR)
    cache = tmp_path / "cache"
    first = _load(bundle_dir, cache, promoted[1])
    boosters = first.describe()["boosters"]
    assert first.adoption.shipped == 0 and first.built_here == boosters
    second = _load(bundle_dir, cache, promoted[1])  # e.g. the next worker, or a restart
    assert second.built_here == 0
    assert second.engine == "compiled"


def test_libraries_built_for_another_platform_are_compiled_here(promoted, bundle_dir, tmp_path):
    index = _index(bundle_dir)
    index["toolchain"]["platform"] = "linux-riscv64"
    data = json.dumps(index).encode()
    (bundle_dir / COMPILED_DIR / INDEX).write_bytes(data)
    predictor = _load(bundle_dir, tmp_path / "cache", sha256_bytes(data))
    assert predictor.adoption.other_platform and not predictor.adoption.rejected
    assert predictor.built_here == len(index["libraries"])


def test_no_compiler_and_nothing_shipped_serves_xgboost(
    promoted, bundle_dir, tmp_path, dataset, monkeypatch
):
    shutil.rmtree(bundle_dir / COMPILED_DIR)

    def no_toolchain(*_args, **_kwargs):
        raise RuntimeError("gcc: not found")

    monkeypatch.setattr(ct, "compile_booster", no_toolchain)
    predictor = _load(bundle_dir, tmp_path / "cache", promoted[1])
    assert predictor.fallback and predictor.engine == "xgboost"
    described = predictor.describe()
    assert described["engine"] == "xgboost" and described["engine_configured"] == "compiled"
    assert "gcc: not found" in described["engine_reason"]
    forecast = predictor.predict(dataset.times, dataset.values, dataset.ends("test")[:5])
    assert np.isfinite(forecast).all()


@pytest.fixture(scope="module")
def champion(dataset, tmp_path_factory):
    """A registry whose champion was promoted through ``evaluate.stage.promote``."""
    from slocast.adapters.registry import ModelRegistry
    from slocast.evaluate.stage import promote
    from slocast.train.tracking import log_trained_model

    home = tmp_path_factory.mktemp("home")
    registry = ModelRegistry(
        f"sqlite:///{home / 'mlflow.db'}", artifact_location=(home / "mlruns").as_uri()
    )
    model = train_family(dataset, "xgboost", seed=0)
    ref = log_trained_model(
        registry, model, dataset=dataset, task="t", role="candidate", bundle_dir=home / "b"
    )
    promote(registry, ref, test_metrics={"nrmse": 1.0}, decision={"decision_id": "d"}, scratch=home)
    return registry, home


def test_promotion_ships_compiled_trees(champion, tmp_path) -> None:
    """Libraries and index beside the bundle, the index hash on the version, then the
    alias; promoting again leaves them as they are."""
    from slocast.evaluate.stage import promote

    registry, _ = champion
    ref = registry.champion("t")
    assert ref is not None
    index_sha = ref.tags[TAG_COMPILED_INDEX]
    downloaded = registry.download(ref, tmp_path / "served")
    assert sha256_bytes((downloaded / COMPILED_DIR / INDEX).read_bytes()) == index_sha
    predictor = _load(downloaded, tmp_path / "cache", index_sha)
    assert predictor.built_here == 0 and predictor.adoption.adopted > 0
    promote(registry, ref, test_metrics={}, decision={"decision_id": "d"}, scratch=tmp_path)
    assert registry.champion("t").tags[TAG_COMPILED_INDEX] == index_sha


def test_server_counts_rejected_and_locally_built_libraries(champion, tmp_path) -> None:
    """A library tampered with in the artifact store: the serving process refuses it,
    compiles that booster itself, and says so in its metrics."""
    from slocast.serve.metrics import ServeMetrics
    from slocast.serve.reloading import ModelHolder
    from slocast.settings import ServeSettings

    registry, home = champion
    store = next((home / "mlruns").rglob(f"{COMPILED_DIR}/{INDEX}")).parent
    library = sorted(store.glob("trees-*.so"))[0]
    original = library.read_bytes()
    library.write_bytes(original + b"\0")
    try:
        settings = ServeSettings.from_env(
            {
                "SLOCAST_HOME": str(home),
                "SLOCAST_TASK": "t",
                "SLOCAST_SERVE_CACHE": str(tmp_path / "serving"),
            }
        )
        metrics = ServeMetrics()
        outcome = ModelHolder(settings, metrics).refresh()
    finally:
        library.write_bytes(original)
    assert outcome.outcome == "swapped"
    text = metrics.render().decode()
    assert "slocast_compiled_libraries_rejected_total 1.0" in text
    assert "slocast_compiled_libraries_built_total 1.0" in text
    assert "slocast_engine_fallbacks_total 0.0" in text


def test_cached_bundle_picks_up_libraries_of_a_later_promotion(champion, dataset, tmp_path):
    """A server that fetched a version before it was compiled (e.g. a rollback to a
    version first promoted without libraries) fetches the libraries with the tag."""
    from slocast.evaluate.stage import attach_compiled
    from slocast.serve.loading import fetch_bundle
    from slocast.train.tracking import log_trained_model

    registry, home = champion
    model = train_family(dataset, "xgboost", seed=1)
    ref = log_trained_model(
        registry, model, dataset=dataset, task="t", role="candidate", bundle_dir=tmp_path / "b"
    )
    models = tmp_path / "models"
    first = fetch_bundle(registry, ref, models)
    assert not (first / COMPILED_DIR).exists()
    attach_compiled(registry, ref, tmp_path)
    tagged = registry.version("t", ref.version)
    again = fetch_bundle(registry, tagged, models)
    assert again == first
    index = (again / COMPILED_DIR / INDEX).read_bytes()
    assert sha256_bytes(index) == tagged.tags[TAG_COMPILED_INDEX]
