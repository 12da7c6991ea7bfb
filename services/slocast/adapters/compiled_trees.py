"""Serve XGBoost tree ensembles as native code (Treelite + TL2cgen), honestly.

One module owns the compile/load cycle so every server gets the same guarantees:

- :func:`compile_booster` turns a saved booster (``.json``/``.ubj``) into a shared
  library with TL2cgen (``parallel_comp``) and writes a JSON manifest beside it
  recording the model's and the library's SHA-256 and the toolchain (gcc, platform,
  Python, Treelite, TL2cgen). Libraries are cached by model hash.
- :func:`verified_library` checks a cached library against its manifest (model and
  library SHA-256, platform) before anyone loads it.
- :func:`ensure_compiled` returns a verified cached library or builds one.

The LTE server evaluates these libraries through ``slocast._native``
(:mod:`slocast.serve.tree_engine`, which also owns the XGBoost fallback).
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

from slocast.core.digests import sha256_file

log = logging.getLogger(__name__)

# Files TL2cgen splits the generated C into, so gcc compiles them in parallel
# (docs/serving.md has the compile times).
PARALLEL_COMP = 8
# -O1: about half of -O2's compile time at no measurable prediction cost; the
# generated code is branch chains the optimiser barely improves.
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
