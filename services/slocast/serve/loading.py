"""Turning the registry's champion into an immutable, ready-to-serve model.

Everything a request needs is computed here, once per version: the predictor and
its engine, the bounds tables, the validation rules, the quantile keys, the
pre-serialised ``model`` block of every response. A :class:`ServedModel` never changes after it
is built, so a request that grabbed it keeps a consistent view while a reload
swaps in the next one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from slocast.adapters.registry import ModelRegistry, VersionRef
from slocast.core.features import FeatureSpec
from slocast.core.schema import FEATURE_COLUMNS, TARGET_COLUMNS
from slocast.models.bundle import ModelBundle, load_bundle, read_manifest
from slocast.models.compiled_bundle import COMPILED_DIR, INDEX, TAG_COMPILED_INDEX
from slocast.serve.bounds import Bounds
from slocast.serve.engines import Predictor, make_predictor
from slocast.serve.kernels import NativeBounds
from slocast.serve.validation import RequestRules
from slocast.settings import ServeSettings

log = logging.getLogger(__name__)
PREFERRED_QUANTILE = 0.9


@dataclass(frozen=True)
class ServedModel:
    ref: VersionRef
    bundle: ModelBundle
    predictor: Predictor
    bounds: NativeBounds
    rules: RequestRules
    model_block: orjson.Fragment  # {"name", "version", "family"} as JSON
    info: dict
    loaded_at: float
    load_seconds: float
    targets: tuple[str, ...] = field(default=TARGET_COLUMNS)

    @property
    def version(self) -> str:
        return self.ref.version


def fetch_bundle(registry: ModelRegistry, ref: VersionRef, models_dir: Path) -> Path:
    """The version's bundle directory under ``models_dir`` (downloaded once, shared).

    Workers download into a private temporary directory and rename it into place,
    so a concurrent worker sees either nothing or a complete bundle; the SHA-256
    manifest is verified again by :func:`load_bundle` anyway.
    """
    final = models_dir / f"{ref.task}-v{ref.version}-{ref.run_id[:12]}"
    compiled = final / COMPILED_DIR / INDEX
    # A version compiled at a (re)promotion after this cache fetched it: fetch again
    # for the libraries.
    stale = TAG_COMPILED_INDEX in ref.tags and not compiled.is_file()
    if (final / "manifest.json").is_file() and not stale:
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=models_dir))
    try:
        downloaded = registry.download(ref, scratch)
        bundle_root = _bundle_root(downloaded)
        try:
            if stale and (final / "manifest.json").is_file():
                os.rename(bundle_root / COMPILED_DIR, final / COMPILED_DIR)
            else:
                os.rename(bundle_root, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _bundle_root(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    inner = [p for p in path.rglob("manifest.json")]
    if len(inner) != 1:
        raise FileNotFoundError(f"{path}: no unique manifest.json in the downloaded artifact")
    return inner[0].parent


def value_floor(spec: FeatureSpec) -> np.ndarray:
    """The lowest value a request may send per column (``RequestRules.value_floor``)."""
    floor = np.full(len(FEATURE_COLUMNS), -np.inf)
    if spec.target_floor is not None:
        for name, lowest in zip(spec.targets, spec.target_floor, strict=True):
            floor[FEATURE_COLUMNS.index(name)] = lowest
    floor.setflags(write=False)
    return floor


def build_served_model(ref: VersionRef, bundle_dir: Path, settings: ServeSettings) -> ServedModel:
    """Load, compile and self-test one version; raises on any problem."""
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    predictor = make_predictor(
        bundle,
        bundle_dir,
        settings.compiled_dir,
        tree_engine=settings.tree_engine,
        compiled_index_sha256=ref.tags.get(TAG_COMPILED_INDEX),
    )
    spec = bundle.spec
    step_ns = int(round(spec.step_seconds * 1e9))
    bounds = NativeBounds(Bounds(bundle))
    levels = {float(q): f"{q:g}" for q in bounds.levels}
    rules = RequestRules(
        history_rows=int(bundle.forecaster.history_rows),
        max_history_rows=max(settings.max_history_rows, int(bundle.forecaster.history_rows)),
        max_batch_series=settings.max_batch_series,
        step_ns=step_ns,
        tolerance_ns=int(step_ns * settings.spacing_tolerance),
        max_horizon=int(spec.horizon),
        levels=levels,
        default_quantiles=(PREFERRED_QUANTILE,) if PREFERRED_QUANTILE in levels else (),
        value_floor=value_floor(spec),
    )
    _self_test(predictor, rules, spec.horizon)
    manifest = read_manifest(bundle_dir)
    test_metrics = {
        key[len("test.") :]: float(value)
        for key, value in ref.tags.items()
        if key.startswith("test.")
    }
    load_seconds = time.perf_counter() - started
    loaded_at = time.time()
    info = {
        "name": f"slocast-{ref.task}",
        "task": ref.task,
        "version": ref.version,
        "family": bundle.family,
        "run_id": ref.run_id,
        "dataset_id": ref.dataset_id,
        "created_at": manifest.get("created_at"),
        "window": int(spec.window),
        "history_rows": rules.history_rows,
        "max_horizon": rules.max_horizon,
        "step_seconds": float(spec.step_seconds),
        "columns": list(FEATURE_COLUMNS),
        "targets": list(TARGET_COLUMNS),
        "calibration": {
            "levels": list(levels.values()),
            "n_calibration": bundle.calibration.n_calibration,
            "default_quantiles": [f"{q:g}" for q in rules.default_quantiles],
        },
        "test_metrics": test_metrics,
        **predictor.describe(),
        "loaded_at": loaded_at,
        "load_seconds": round(load_seconds, 3),
        "pid": os.getpid(),
    }
    block = orjson.dumps({"name": info["name"], "version": ref.version, "family": bundle.family})
    return ServedModel(
        ref=ref,
        bundle=bundle,
        predictor=predictor,
        bounds=bounds,
        rules=rules,
        model_block=orjson.Fragment(block),
        info=info,
        loaded_at=loaded_at,
        load_seconds=load_seconds,
    )


def _self_test(predictor: Predictor, rules: RequestRules, horizon: int) -> None:
    """Predict once on a flat synthetic history: a broken model never gets swapped in.

    Also warms up lazy initialisation (ONNX sessions, ctypes symbols) before the
    first client request.
    """
    rows = rules.history_rows
    times = np.datetime64("2020-01-01T00:00:00", "ns") + np.arange(rows) * np.timedelta64(
        rules.step_ns, "ns"
    )
    values = np.ones((rows, len(FEATURE_COLUMNS)), dtype=np.float64)
    out = predictor.predict(times, values, np.array([rows], dtype=np.int64))
    expected = (1, horizon, len(TARGET_COLUMNS))
    if out.shape != expected:
        raise RuntimeError(
            f"model self-test: predict returned shape {out.shape}, expected {expected}"
        )
    if not np.isfinite(out).all():
        raise RuntimeError("model self-test: predict returned non-finite values")
