"""Pull published bundles from the training server over HTTP (upstream's topology).

slocast's predictors normally share the trainer's model directory (a volume) and
follow its ``CURRENT`` pointer. The upstream deployment gives each prediction pod
its own empty directory and a ``TRAINING_SERVER_URL`` to download models from; a
slocast predictor dropped into it would otherwise serve the cold-start prior
forever. With a sync URL set, :class:`BundleSync` polls the training server's
``GET /bundle/current`` (the published manifest, with its SHA-256 as ETag, so an
unchanged model costs a 304), downloads every file the manifest lists from
``GET /bundle/{version}/{file}``, checks each against the manifest's SHA-256, and
publishes the bundle into the local model directory with the same write-then-rename
steps as the trainer. The workers' pointer watchers then load it as usual (and
verify every hash again). Nothing executable travels: trees are UBJSON, the rest JSON.

All workers of a server share the local directory; an exclusive ``flock`` makes one
of them do the polling at a time, and the others take over if it dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from slocast.latency.bundle import (
    MANIFEST,
    BundleError,
    Pointer,
    publish,
    read_manifest,
    read_pointer,
    safe_name,
)

log = logging.getLogger(__name__)
LOCK_FILE = ".sync.lock"
# A published bundle is a few MB at most (two forests); a larger answer is refused.
MAX_FILE_BYTES = 64 << 20


class SyncError(Exception):
    """The training server's answer cannot become a local bundle."""


@dataclass
class SyncStats:
    """What ``/status`` reports about the sync of this worker's server."""

    url: str
    syncs: int = 0  # bundles this process downloaded and published
    errors: int = 0
    last_error: str | None = None


def _get(url: str, timeout: float, etag: str | None = None) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        # http(s) only: the settings refuse any other scheme
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_FILE_BYTES + 1)
            if len(body) > MAX_FILE_BYTES:
                raise SyncError(f"{url}: answer larger than {MAX_FILE_BYTES} bytes")
            return response.status, body, response.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        if exc.code in (304, 404):
            return exc.code, b"", None
        raise SyncError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SyncError(f"{url}: {exc}") from None


def _safe(name: object, what: str) -> str:
    if not safe_name(name):
        # refused before it becomes a path
        raise SyncError(f"unsafe {what} in the published manifest: {name!r}")
    return name


def published_version(base_url: str, timeout: float = 2.0) -> str | None:
    """The version the training server publishes now (None: nothing trained yet).
    Raises :class:`SyncError`."""
    status, raw, _ = _get(f"{base_url.rstrip('/')}/bundle/current", timeout)
    if status == 404:
        return None
    try:
        return _safe(json.loads(raw)["version"], "version")
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncError(f"the published manifest is not a bundle manifest: {exc!r}") from None


def sync_once(
    base_url: str, model_dir: Path, *, timeout: float = 10.0, etag: str | None = None
) -> tuple[bool, str | None]:
    """One poll. Returns ``(published, etag)``: whether a new bundle was published
    locally, and the manifest ETag to send next time. Raises :class:`SyncError`."""
    status, raw, new_etag = _get(f"{base_url}/bundle/current", timeout, etag)
    if status in (304, 404):  # unchanged, or nothing trained yet
        return False, etag if status == 304 else None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        manifest = json.loads(raw)
        version = _safe(manifest["version"], "version")
        files = {_safe(name, "file name"): str(sha) for name, sha in manifest["files"].items()}
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise SyncError(f"the published manifest is not a bundle manifest: {exc!r}") from None
    if MANIFEST in files:
        raise SyncError("the published manifest lists itself")
    pointer = Pointer(version, digest)
    try:
        local = read_pointer(model_dir)
    except BundleError:  # unreadable: replaced below
        local = None
    # Versions sort by publication time. A newer local one means a directory shared
    # with the trainer, which published again after this answer: never go back.
    if local == pointer or (local is not None and local.version > version):
        return False, new_etag
    bundles = model_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    final = bundles / version
    try:  # already downloaded (an earlier poll, or a directory shared with the trainer)
        read_manifest(model_dir, pointer)
    except BundleError:
        shutil.rmtree(final, ignore_errors=True)  # a partial or different copy
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=bundles))
        try:
            for name, sha in files.items():
                status, body, _ = _get(f"{base_url}/bundle/{version}/{name}", timeout)
                if status != 200:  # pruned since the manifest was read: next poll
                    raise SyncError(f"{version}/{name}: HTTP {status}")
                if hashlib.sha256(body).hexdigest() != sha:
                    raise SyncError(f"{version}/{name} does not match the manifest's SHA-256")
                (tmp / name).write_bytes(body)
            (tmp / MANIFEST).write_bytes(raw)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    publish(model_dir, final)
    log.info("synced model %s from %s", version, base_url)
    return True, new_etag


class BundleSync(threading.Thread):
    """Polls the training server every ``interval`` seconds (one worker at a time)."""

    def __init__(self, base_url: str, model_dir: Path, interval: float) -> None:
        super().__init__(name="bundle-sync", daemon=True)
        self.base_url = base_url.rstrip("/")
        self.model_dir = model_dir
        self.interval = interval
        self.stats = SyncStats(self.base_url)
        self._stop = threading.Event()
        self._etag: str | None = None

    def run(self) -> None:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.model_dir / LOCK_FILE, "a+b") as lock:
            while not self._stop.wait(self.interval):
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another worker syncs
                try:
                    synced, self._etag = sync_once(self.base_url, self.model_dir, etag=self._etag)
                    self.stats.syncs += synced
                    self.stats.last_error = None
                except (SyncError, BundleError, OSError) as exc:
                    self._etag = None
                    self.stats.errors += 1
                    if self.stats.last_error != str(exc):
                        log.warning("model sync from %s failed: %s", self.base_url, exc)
                    self.stats.last_error = str(exc)

    def stop(self) -> None:
        self._stop.set()
