"""Claim checks: objects in the store named by URI and verified by SHA-256."""

from __future__ import annotations

from pathlib import Path

from slocast.adapters.storage import ArtifactStore
from slocast.core.digests import sha256_bytes
from slocast.pipeline.kafka.transport import PermanentError


def key_for_uri(store: ArtifactStore, uri: str) -> str:
    """The store key a URI names; a URI outside this store cannot be processed here."""
    root = store.uri("").rstrip("/")
    if not uri.startswith(root + "/"):
        raise PermanentError(f"claim check {uri!r} is not in the configured store {root}")
    key = uri[len(root) + 1 :]
    # Keys the pipeline writes are plain relative paths; anything else is not a claim
    # (a local store would resolve `..`, an S3 store would take it literally).
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise PermanentError(f"claim check {uri!r} does not name an object (key {key!r})")
    return key


def fetch_verified(store: ArtifactStore, uri: str, sha256: str) -> bytes:
    """The object's bytes, refused if missing or if they do not match the hash."""
    key = key_for_uri(store, uri)
    try:
        data = store.get_bytes(key)
    except (KeyError, IsADirectoryError, NotADirectoryError) as exc:
        raise PermanentError(f"claim check {uri!r}: no such object ({exc})") from None
    actual = sha256_bytes(data)
    if actual != sha256:
        raise PermanentError(f"claim check {uri!r}: SHA-256 {actual[:12]}.. != {sha256[:12]}..")
    return data


def upload_file(store: ArtifactStore, path: Path) -> tuple[str, str]:
    """Store a local file under its content hash; return (URI, SHA-256)."""
    data = path.read_bytes()
    digest = sha256_bytes(data)
    return store.put_bytes(f"uploads/{digest}/{path.name}", data), digest
