"""Native libraries shipped beside a model bundle: built at promotion, verified at load.

At promotion (:func:`slocast.evaluate.stage.promote`, called by the in-process
runner and by the Kafka evaluator) every booster of an XGBoost champion is
compiled with TL2cgen into ``compiled/`` next to the bundle's files: one shared
library per booster, named by the booster's SHA-256, with its manifest (library
SHA-256, toolchain), and ``compiled/index.json`` listing them all. Trees only: the
feature kernel is part of the package (``slocast._native``), never of a model. The index's
SHA-256 goes on the registry version as a tag, a channel separate from the
artifact store: a library replaced in the store, even together with its
manifest, no longer matches.

Before a server uses a shipped library it checks index against tag, library
against index, booster against the bundle manifest and platform against its own
(:func:`adopt_compiled`). A library that fails is rejected (logged, counted) and
the server compiles that booster itself, or serves it with XGBoost when it cannot.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from slocast.adapters.compiled_trees import (
    CompiledLibrary,
    binary_compatible,
    ensure_compiled,
    library_paths,
    toolchain_info,
    verified_library,
)
from slocast.core.digests import sha256_bytes, sha256_file
from slocast.models.bundle import BundleError, ModelBundle, read_manifest

log = logging.getLogger(__name__)

COMPILED_DIR = "compiled"
INDEX = "index.json"
INDEX_FORMAT = 1
# Registry version tag holding the SHA-256 of compiled/index.json.
TAG_COMPILED_INDEX = "slocast.compiled.index_sha256"


def compile_bundle(bundle_dir: Path, bundle: ModelBundle) -> str | None:
    """Compile every booster of ``bundle`` into ``bundle_dir/compiled``.

    Returns the SHA-256 of the written index, or None for families without
    compiled code. Raises ``RuntimeError`` when the toolchain cannot compile.
    """
    boosters = getattr(bundle.forecaster, "boosters", None)
    if boosters is None:
        return None
    hashes = read_manifest(bundle_dir)["files"]
    out = bundle_dir / COMPILED_DIR
    libraries = {}
    for entry in boosters():
        libraries[entry.file] = _entry(ensure_compiled(bundle_dir / entry.file, out))
        if libraries[entry.file]["model_sha256"] != hashes[entry.file]:
            raise BundleError(f"{entry.file} does not match its SHA-256 in the bundle manifest")
    index = {
        "format": INDEX_FORMAT,
        "toolchain": toolchain_info(),
        "libraries": libraries,
    }
    data = json.dumps(index, indent=2, sort_keys=True).encode()
    (out / INDEX).write_bytes(data)
    return sha256_bytes(data)


def _entry(paths: CompiledLibrary) -> dict:
    manifest = json.loads(paths.manifest.read_text())
    return {
        "model_sha256": manifest["model_sha256"],
        "library": paths.library.name,
        "library_sha256": manifest["library_sha256"],
        "manifest": paths.manifest.name,
    }


@dataclass
class Adoption:
    """What :func:`adopt_compiled` did with the libraries shipped in a bundle."""

    shipped: int = 0  # libraries listed in the shipped index
    adopted: int = 0  # verified and in the cache (copied now or already there)
    rejected: list[str] = field(default_factory=list)  # why, one entry per refusal
    other_platform: bool = False  # built for another OS/CPU/libc: compiled here instead

    def describe(self) -> dict:
        return {
            "shipped": self.shipped,
            "adopted": self.adopted,
            "rejected": self.rejected,
            "other_platform": self.other_platform,
        }


def adopt_compiled(
    bundle_dir: Path, cache_dir: Path, expected_index_sha256: str | None
) -> Adoption:
    """Copy the verified shipped libraries of a bundle into the compile cache.

    Callers hold the cache's compile lock. Nothing shipped, or nothing usable,
    leaves the cache as it was: the boosters are then compiled locally.
    """
    index_path = bundle_dir / COMPILED_DIR / INDEX
    report = Adoption()
    if not index_path.is_file():
        return report
    data = index_path.read_bytes()
    try:
        index = json.loads(data)
        libraries = dict(index["libraries"])
    except (ValueError, KeyError, TypeError):
        return _refuse(report, f"{index_path}: unreadable index")
    report.shipped = len(libraries)
    if expected_index_sha256 is None:
        return _refuse(report, "the registry version records no compiled index SHA-256")
    if sha256_bytes(data) != expected_index_sha256:
        return _refuse(report, "compiled/index.json does not match the registry's SHA-256")
    if not binary_compatible(index.get("toolchain", {}), toolchain_info()):
        log.info("shipped libraries were built for %s; compiling here", index.get("toolchain"))
        report.other_platform = True
        return report
    shipped = bundle_dir / COMPILED_DIR
    bundle_hashes = read_manifest(bundle_dir)["files"]
    for file, entry in sorted(libraries.items()):
        if bundle_hashes.get(file) != entry.get("model_sha256"):
            _refuse(report, f"{file}: the index names another booster than the bundle holds")
        elif _adopt(shipped, file, entry, cache_dir, report):
            report.adopted += 1
    return report


def _adopt(shipped: Path, label: str, entry: dict, cache_dir: Path, report: Adoption) -> bool:
    """Verify one shipped library and put it into the cache; False (and why) if refused."""
    reason = _check_shipped(shipped, label, entry)
    if reason is not None:
        _refuse(report, reason)
        return False
    if verified_library(entry["model_sha256"], cache_dir) is None:
        _install(shipped, entry, cache_dir)
    return True


def _check_shipped(directory: Path, file: str, entry: dict) -> str | None:
    """Why the shipped library of booster ``file`` cannot be used, or None."""
    expected = library_paths(entry["model_sha256"], directory)
    library, manifest = directory / entry.get("library", ""), directory / entry.get("manifest", "")
    if (library, manifest) != (expected.library, expected.manifest):
        return f"{file}: unexpected library name {entry.get('library')!r}"
    if not (library.is_file() and manifest.is_file()):
        return f"{file}: {library.name} is missing"
    if sha256_file(library) != entry.get("library_sha256"):
        return f"{file}: {library.name} does not match its SHA-256 in the index"
    try:
        recorded = json.loads(manifest.read_text()).get("library_sha256")
    except (OSError, ValueError):
        recorded = None
    if recorded != entry["library_sha256"]:
        return f"{file}: {manifest.name} disagrees with the index"
    return None


def _install(directory: Path, entry: dict, cache_dir: Path) -> None:
    """Library and manifest into the cache, each by rename: readers never see half a file."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name in (entry["library"], entry["manifest"]):
        fd, tmp = tempfile.mkstemp(prefix=".adopt-", dir=cache_dir)
        os.close(fd)
        shutil.copyfile(directory / name, tmp)
        os.replace(tmp, cache_dir / name)


def _refuse(report: Adoption, reason: str) -> Adoption:
    log.error("refusing a compiled library shipped with the model: %s", reason)
    report.rejected.append(reason)
    return report
