"""Immutable model bundles and the pointer that says which one serves.

Layout of the model directory (shared by the training server and every prediction
worker)::

    MODEL_DIR/
      CURRENT                      {"version": ..., "manifest_sha256": ...}
      bundles/<version>/
        manifest.json              versions, metrics, SHA-256 of every file
        ttft.ubj  ttft.calibration.json
        tpot.ubj  tpot.calibration.json

No native code travels in a bundle: each prediction worker builds the forest tables
of the native engine from the XGBoost model at load (slocast.latency.native).

A bundle is written completely under a temporary name, renamed into place, and only
then published by atomically replacing ``CURRENT`` (``os.replace``). Readers verify
the manifest's hash from the pointer and every file's hash from the manifest before
loading, so a worker never serves a half-written or tampered model. No pickle: trees
are XGBoost UBJSON, calibration is JSON.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from slocast.core.digests import sha256_file
from slocast.latency.model import TARGETS, TargetModel

log = logging.getLogger(__name__)

# What manifests (and both servers) report: the family, and what every served bound
# is whatever the trees' training objective, the P-quantile of the latency. Clients
# of the upstream API branch on "quantile" vs "mean"; per-target objectives are
# reported separately.
MODEL_TYPE = "xgboost"
PUBLIC_OBJECTIVE = "quantile"
POINTER = "CURRENT"
MANIFEST = "manifest.json"
# Older bundles are deleted, keeping this many, so the directory stays bounded while
# a worker that is still loading the previous version finds it intact.
KEEP_BUNDLES = 4


# Bundle versions and file names as write_bundle makes them: never a path.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def safe_name(name: object) -> bool:
    """Whether ``name`` can be a bundle version or a file name of a bundle."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name))


class BundleError(Exception):
    """A bundle or pointer is missing, unreadable or fails verification."""


@dataclass(frozen=True)
class Pointer:
    version: str
    manifest_sha256: str


_VERSION = re.compile(r"^(\d{8}T\d{6})-(\d{9})$")


def version_ns(version: str) -> int | None:
    """Nanoseconds since the epoch a version id names (None: not a version id)."""
    match = _VERSION.match(version)
    if match is None:
        return None
    seconds = calendar.timegm(time.strptime(match[1], "%Y%m%dT%H%M%S"))
    return seconds * 10**9 + int(match[2])


def new_version(after: str | None = None) -> str:
    """Sortable, unique version id: UTC time to the nanosecond, from one clock read.

    Later than ``after`` (the version serving now) even when the clock is not: predictors
    and `/reload` take "sorts after" to mean "published after"."""
    ns = time.time_ns()
    floor = version_ns(after) if after else None
    if floor is not None and ns <= floor:
        ns = floor + 1
    seconds, fraction = divmod(ns, 10**9)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(seconds))}-{fraction:09d}"


def write_bundle(model_dir: Path, models: dict[str, TargetModel], info: dict) -> Path:
    """Write a complete bundle (not yet published); returns its directory."""
    bundles = model_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    try:
        current = read_pointer(model_dir)
    except BundleError:
        current = None
    version = new_version(current.version if current else None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=bundles))
    try:
        targets = {}
        for target in TARGETS:
            targets[target] = models[target].save(tmp)
        files = {
            str(path.relative_to(tmp)): sha256_file(path)
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        }
        manifest = {"version": version, "targets": targets, "files": files, **info}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = bundles / version
        os.replace(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(model_dir: Path, bundle: Path) -> Pointer:
    """Make ``bundle`` the serving version (atomic) and prune old bundles."""
    pointer = Pointer(bundle.name, sha256_file(bundle / MANIFEST))
    tmp = model_dir / f".{POINTER}.{os.getpid()}.tmp"
    tmp.write_text(
        json.dumps({"version": pointer.version, "manifest_sha256": pointer.manifest_sha256})
    )
    os.replace(tmp, model_dir / POINTER)
    _prune(model_dir / "bundles", keep={bundle.name})
    return pointer


# A bundle being written lives in a dot-directory for seconds; one this old is left
# by a writer killed mid-write.
ABANDONED_WRITE_S = 3600.0


def _prune(bundles: Path, keep: set[str]) -> None:
    versions = sorted(
        p.name for p in bundles.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    for name in versions[:-KEEP_BUNDLES]:
        if name not in keep:
            shutil.rmtree(bundles / name, ignore_errors=True)
    cutoff = time.time() - ABANDONED_WRITE_S
    for path in bundles.iterdir():
        with contextlib.suppress(OSError):
            if path.name.startswith(".") and path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


def read_pointer(model_dir: Path) -> Pointer | None:
    try:
        data = json.loads((model_dir / POINTER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BundleError(f"unreadable pointer {model_dir / POINTER}: {exc}") from exc
    return Pointer(str(data["version"]), str(data["manifest_sha256"]))


def _manifest_bytes(model_dir: Path, pointer: Pointer) -> bytes:
    """The manifest of the bundle ``pointer`` names, checked against its SHA-256."""
    try:
        raw = (model_dir / "bundles" / pointer.version / MANIFEST).read_bytes()
    except OSError as exc:
        raise BundleError(f"bundle {pointer.version} has no readable manifest: {exc}") from exc
    if hashlib.sha256(raw).hexdigest() != pointer.manifest_sha256:
        raise BundleError(f"manifest of {pointer.version} does not match the pointer's SHA-256")
    return raw


def read_manifest(model_dir: Path, pointer: Pointer) -> tuple[Path, dict]:
    """The bundle directory and its manifest, with every file's hash verified."""
    bundle = model_dir / "bundles" / pointer.version
    manifest = json.loads(_manifest_bytes(model_dir, pointer))
    for name, digest in manifest["files"].items():
        path = bundle / name
        if not path.is_file() or sha256_file(path) != digest:
            raise BundleError(f"{pointer.version}/{name} is missing or fails its SHA-256 check")
    return bundle, manifest


def published_manifest(model_dir: Path) -> tuple[Pointer, bytes] | None:
    """The serving bundle's pointer and manifest bytes (their SHA-256 checked against
    the pointer), or None when nothing is published. ``BundleError`` while the
    bundle is being replaced."""
    pointer = read_pointer(model_dir)
    return None if pointer is None else (pointer, _manifest_bytes(model_dir, pointer))


def bundle_file(model_dir: Path, version: str, name: str) -> bytes | None:
    """The bytes of file ``name`` of bundle ``version`` if that bundle's manifest lists
    it (the manifest itself is served by :func:`published_manifest`), else None."""
    if not (safe_name(version) and safe_name(name)):
        return None
    bundle = model_dir / "bundles" / version
    try:
        files = json.loads((bundle / MANIFEST).read_bytes())["files"]
        return (bundle / name).read_bytes() if name in files else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
