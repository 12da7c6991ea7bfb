"""XGBoost champions: native features, then compiled trees or XGBoost, by configuration.

Two engines compute the raw booster outputs, and nothing else differs:

- ``compiled`` (``SLOCAST_TREE_ENGINE=compiled``, the default): the TL2cgen
  libraries built at promotion (:mod:`slocast.models.compiled_bundle`), verified
  and adopted into the compile cache, or compiled here when none verify; every
  booster evaluated in one native call (:class:`slocast.serve.kernels.CompiledTrees`).
- ``xgboost`` (``SLOCAST_TREE_ENGINE=xgboost``): XGBoost ``inplace_predict`` per
  booster. It is also the fallback when compiled trees cannot be had (no library
  and no compiler, a library that does not load): logged, counted
  (``slocast_engine_fallbacks_total``) and named with its reason in ``/v1/model``.

Features come from the native kernel (:class:`slocast.serve.kernels.NativeFeatures`,
equal to :meth:`XGBoostForecaster.features` on every window) and the forecast from
:meth:`XGBoostForecaster.finish`, so a served forecast is the evaluator's.
"""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

from slocast.adapters.compiled_trees import ensure_compiled, verified_library
from slocast.core.digests import sha256_file
from slocast.models.bundle import ModelBundle
from slocast.models.compiled_bundle import Adoption, adopt_compiled
from slocast.serve.kernels import CompiledTrees, NativeFeatures
from slocast.settings import TREE_ENGINES

log = logging.getLogger(__name__)

ENGINE_COMPILED, ENGINE_XGBOOST = TREE_ENGINES


class TreePredictor:
    """Forecasts of an :class:`XGBoostForecaster` with one engine for every call."""

    def __init__(
        self,
        bundle: ModelBundle,
        boosters: list[xgb.Booster],
        compiled: CompiledTrees | None,
        *,
        configured: str,
        reason: str | None = None,
        adoption: Adoption | None = None,
        built_here: int = 0,
    ) -> None:
        self._forecaster = bundle.forecaster
        self._features = NativeFeatures(bundle.spec)
        self._boosters = boosters  # step-major: (step, target) as boosters() lists them
        self._compiled = compiled
        self._shape = (bundle.spec.horizon, len(bundle.spec.targets))
        self.engine = ENGINE_COMPILED if compiled is not None else ENGINE_XGBOOST
        self.configured = configured
        self.reason = reason  # why XGBoost serves although compiled trees were configured
        self.adoption = adoption or Adoption()
        self.built_here = built_here

    @property
    def fallback(self) -> bool:
        """Compiled trees were configured but XGBoost serves."""
        return self.configured == ENGINE_COMPILED and self._compiled is None

    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        ends = np.asarray(ends, np.int64)
        x = self._features(times, values, ends)
        if self._compiled is not None:
            raw = self._compiled.predict(x)
        else:
            raw = np.empty((ends.size, len(self._boosters)), np.float32)
            for i, booster in enumerate(self._boosters):
                raw[:, i] = booster.inplace_predict(x)
        # (N, boosters) in (step, target) order is (N, horizon, K): a view.
        return self._forecaster.finish(raw.reshape(ends.size, *self._shape), values, ends)

    def describe(self) -> dict:
        return {
            "engine": self.engine,
            "engine_configured": self.configured,
            "engine_reason": self.reason,
            "boosters": len(self._boosters),
            "compiled_libraries": {**self.adoption.describe(), "built_here": self.built_here},
        }


def load_tree_predictor(
    bundle: ModelBundle,
    bundle_dir: Path,
    compiled_dir: Path,
    *,
    engine: str = ENGINE_COMPILED,
    compiled_index_sha256: str | None = None,
) -> TreePredictor:
    """The predictor of an XGBoost ``bundle`` with the configured ``engine``.

    Compiled trees: the libraries shipped with the bundle when they verify against
    ``compiled_index_sha256`` (the registry's tag), else compiled here, else XGBoost
    with the reason. The bundle's files were verified by :func:`load_bundle`.
    """
    if engine not in TREE_ENGINES:
        raise ValueError(f"tree engine {engine!r}; expected one of {', '.join(TREE_ENGINES)}")
    started = time.perf_counter()
    files = [bundle_dir / entry.file for entry in bundle.forecaster.boosters()]
    boosters = [_xgboost(path) for path in files]
    if engine == ENGINE_XGBOOST:
        return TreePredictor(bundle, boosters, None, configured=engine)
    compiled_dir.mkdir(parents=True, exist_ok=True)
    compiled, reason, built = None, None, 0
    # One compiler at a time per cache: a second worker waits, then finds the
    # libraries in the cache instead of compiling the same models again.
    with open(compiled_dir / ".compile.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        adoption = adopt_compiled(bundle_dir, compiled_dir, compiled_index_sha256)
        try:
            libraries = []
            for path in files:
                built += verified_library(sha256_file(path), compiled_dir) is None
                libraries.append(ensure_compiled(path, compiled_dir).library)
            compiled = CompiledTrees(libraries)
        except (RuntimeError, OSError, ValueError) as exc:
            reason = f"compiled trees unavailable: {exc}"
            log.error("serving %s with XGBoost inplace_predict: %s", bundle_dir.name, reason)
    predictor = TreePredictor(
        bundle,
        boosters,
        compiled,
        configured=engine,
        reason=reason,
        adoption=adoption,
        built_here=built,
    )
    log.info(
        "tree engine %s ready in %.1fs: %d boosters",
        predictor.engine,
        time.perf_counter() - started,
        len(boosters),
    )
    return predictor


def _xgboost(path: Path) -> xgb.Booster:
    # One thread per booster: serving scales by worker processes.
    return xgb.Booster(params={"nthread": 1}, model_file=str(path))
