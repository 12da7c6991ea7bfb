"""Serve XGBoost tree ensembles as native code (Treelite + TL2cgen), honestly.

One module owns the compile/load cycle so every server gets the same guarantees:

- :func:`compile_booster` turns a saved booster (``.json``/``.ubj``) into a shared
  library with TL2cgen (``parallel_comp``) and writes a JSON manifest beside it
  recording the model's and the library's SHA-256 and the toolchain (gcc, platform,
  Python, Treelite, TL2cgen). Libraries are cached by model hash.
- :func:`verified_library` checks a cached library against its manifest (model and
  library SHA-256, platform) before anyone loads it.
- :func:`load_tree_model` (the latency server's per-booster loader) verifies or
  builds the library and falls back to XGBoost ``inplace_predict`` when compiling
  is impossible: logged and visible in :attr:`TreeModel.engine`, never silent.
  The LTE server evaluates the same libraries through ``slocast._native``
  (:mod:`slocast.serve.tree_engine`).

Every predictor runs on one thread: serving processes are scaled by workers.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import xgboost as xgb

from slocast.core.digests import sha256_file

log = logging.getLogger(__name__)

ENGINE_TL2CGEN = "tl2cgen"
ENGINE_XGBOOST = "xgboost"
# Threads TL2cgen's compiler splits the generated C into (measured: 200 trees
# compile in ~7 s instead of ~19 s on 2 cores).
PARALLEL_COMP = 8
# -O1 halves gcc time against -O2 (measured: 8.5 s vs 17 s for 200 depth-4 trees on
# a busy 2-core machine) at no measurable prediction cost: the generated code is
# branch chains the optimiser barely improves.
COMPILER_OPTIONS = ["-O1"]


def toolchain_info() -> dict[str, str]:
    """What a compiled library depends on; a library built elsewhere is rebuilt."""
    try:
        gcc = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gcc = "unavailable"
    libc_name, libc_version = platform.libc_ver()
    return {
        "gcc": gcc,
        "platform": f"{sys.platform}-{platform.machine()}",
        "libc": f"{libc_name} {libc_version}".strip(),
        "python": platform.python_version(),
        "treelite": metadata.version("treelite"),
        "tl2cgen": metadata.version("tl2cgen"),
    }


def binary_compatible(built: dict[str, str], here: dict[str, str]) -> bool:
    # The library is plain C loaded with ctypes: only the OS, CPU and libc matter.
    return built.get("platform") == here["platform"] and built.get("libc") == here["libc"]


@dataclass(frozen=True)
class CompiledLibrary:
    library: Path
    manifest: Path


def library_paths(model_sha256: str, lib_dir: Path, prefix: str = "trees") -> CompiledLibrary:
    """Where the library built from ``model_sha256`` (a booster, or a C source) lives."""
    stem = f"{prefix}-{model_sha256[:24]}"
    return CompiledLibrary(library=lib_dir / f"{stem}.so", manifest=lib_dir / f"{stem}.json")


def compile_booster(model_path: Path, lib_dir: Path) -> CompiledLibrary:
    """Compile a saved XGBoost booster into ``lib_dir`` (cached by the model's hash).

    Raises ``RuntimeError`` when the toolchain is missing or compilation fails.
    """
    import tl2cgen
    import treelite

    model_sha = sha256_file(model_path)
    paths = library_paths(model_sha, lib_dir)
    lib_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        model = treelite.frontend.load_xgboost_model(model_path)
        # Compile to a temporary name, then rename: a concurrent loader never sees a
        # half-written library.
        with tempfile.TemporaryDirectory(dir=lib_dir) as tmp:
            tmp_lib = Path(tmp) / paths.library.name
            tl2cgen.export_lib(
                model,
                toolchain="gcc",
                libpath=tmp_lib,
                params={"parallel_comp": PARALLEL_COMP},
                nthread=os.cpu_count() or 1,
                options=COMPILER_OPTIONS,
            )
            os.replace(tmp_lib, paths.library)
    except Exception as exc:  # treelite/tl2cgen raise their own error types
        raise RuntimeError(f"compiling {model_path.name} failed: {exc}") from exc
    manifest = {
        "model_sha256": model_sha,
        "library_sha256": sha256_file(paths.library),
        "library": paths.library.name,
        "num_trees": model.num_tree,
        "num_features": model.num_feature,
        "compile_seconds": round(time.perf_counter() - started, 3),
        "compiler_options": COMPILER_OPTIONS,
        "parallel_comp": PARALLEL_COMP,
        "toolchain": toolchain_info(),
    }
    write_json_atomic(paths.manifest, manifest)
    log.info(
        "compiled %s -> %s in %.1fs",
        model_path.name,
        paths.library.name,
        manifest["compile_seconds"],
    )
    return paths


def ensure_compiled(model_path: Path, lib_dir: Path) -> CompiledLibrary:
    """The verified cached library of this model in ``lib_dir``, compiling if needed."""
    model_sha = sha256_file(model_path)
    if verified_library(model_sha, lib_dir) is not None:
        return library_paths(model_sha, lib_dir)
    return compile_booster(model_path, lib_dir)


def compile_c_library(source: str, library: Path, compiler: list[str], *, what: str) -> float:
    """Compile C ``source`` into the shared library ``library`` (replaced atomically).

    Returns the seconds it took; ``RuntimeError`` naming ``what`` when there is no
    working compiler. Used for the hand-written serving kernels; TL2cgen builds
    the tree libraries itself.
    """
    library.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        path = Path(tmp) / "source.c"
        path.write_text(source)
        built = Path(tmp) / library.name
        try:
            subprocess.run(
                [*compiler, "-o", str(built), str(path), "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            raise RuntimeError(f"compiling the {what} failed: {exc} {detail}".rstrip()) from exc
        os.replace(built, library)
    return time.perf_counter() - started


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def verified_library(model_sha: str, lib_dir: Path, prefix: str = "trees") -> Path | None:
    """The cached library for ``model_sha`` if present, intact and built for this host."""
    paths = library_paths(model_sha, lib_dir, prefix)
    if not (paths.library.exists() and paths.manifest.exists()):
        return None
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        log.warning("unreadable manifest %s; recompiling", paths.manifest)
        return None
    if manifest.get("model_sha256") != model_sha:
        log.warning("manifest %s belongs to another model; recompiling", paths.manifest)
        return None
    if not binary_compatible(manifest.get("toolchain", {}), toolchain_info()):
        log.info(
            "library %s was built for %s; recompiling here",
            paths.library.name,
            manifest.get("toolchain"),
        )
        return None
    if sha256_file(paths.library) != manifest.get("library_sha256"):
        log.warning(
            "library %s does not match its recorded SHA-256; recompiling", paths.library.name
        )
        return None
    return paths.library


class _XGBoostEngine:
    def __init__(self, model_path: Path) -> None:
        self.booster = xgb.Booster(model_file=str(model_path))
        self.booster.set_param({"nthread": 1})
        self.num_features = self.booster.num_features()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(x), dtype=np.float64).reshape(-1)


class _TL2cgenEngine:
    def __init__(self, library: Path) -> None:
        import tl2cgen

        self._dmatrix = tl2cgen.DMatrix
        self.predictor = tl2cgen.Predictor(library, nthread=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        # Pass float32 ourselves: tl2cgen's own dtype conversion breaks under NumPy 2.
        dmat = self._dmatrix(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(self.predictor.predict(dmat), dtype=np.float64).reshape(-1)


@dataclass
class TreeModel:
    """A loaded tree ensemble. ``engine`` names what serves it."""

    model_sha256: str
    engine: str
    _xgb: _XGBoostEngine
    _compiled: _TL2cgenEngine | None
    built_here: bool = False  # compiled by this load (nothing verified was cached)

    @property
    def num_features(self) -> int:
        return self._xgb.num_features

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw model output for a float32 matrix ``(rows, num_features)``."""
        if self._compiled is None:
            return self._xgb.predict(x)
        return self._compiled.predict(x)

    def predict_with(self, engine: str, x: np.ndarray) -> np.ndarray:
        """Predict with a named engine (for agreement tests and benchmarks)."""
        if engine == ENGINE_XGBOOST:
            return self._xgb.predict(x)
        if engine == ENGINE_TL2CGEN and self._compiled is not None:
            return self._compiled.predict(x)
        raise ValueError(f"engine {engine!r} is not loaded for this model")


def load_tree_model(
    model_path: Path,
    lib_dir: Path,
    *,
    compile_if_missing: bool = True,
    expected_sha256: str | None = None,
) -> TreeModel:
    """Load a booster for serving, compiled when possible.

    ``expected_sha256`` (e.g. from a bundle manifest) is checked against the model
    file first; a mismatch raises ``ValueError`` because serving a different model
    than the one promoted is never acceptable.
    """
    model_sha = sha256_file(model_path)
    if expected_sha256 is not None and model_sha != expected_sha256:
        raise ValueError(f"{model_path} has SHA-256 {model_sha}, expected {expected_sha256}")
    xgb_engine = _XGBoostEngine(model_path)
    library = verified_library(model_sha, lib_dir)
    built_here = False
    if library is None and compile_if_missing:
        try:
            library = compile_booster(model_path, lib_dir).library
            built_here = True
        except RuntimeError as exc:
            log.error("serving %s with XGBoost inplace_predict: %s", model_path.name, exc)
    compiled = None
    if library is not None:
        try:
            compiled = _TL2cgenEngine(library)
        except Exception as exc:  # tl2cgen raises its own error type on a bad library
            log.error("cannot load %s (%s); serving with XGBoost inplace_predict", library, exc)
    if compiled is None:
        return TreeModel(model_sha, ENGINE_XGBOOST, xgb_engine, None)
    return TreeModel(model_sha, ENGINE_TL2CGEN, xgb_engine, compiled, built_here)
