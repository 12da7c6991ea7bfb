"""Processed datasets in the artifact store, under their content hash."""

from __future__ import annotations

import json

from slocast.adapters.storage import ArtifactStore
from slocast.core.digests import sha256_bytes
from slocast.core.errors import DatasetError
from slocast.preprocess.dataset import ProcessedDataset


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def save_dataset(store: ArtifactStore, dataset: ProcessedDataset) -> str:
    """Write rows then metadata; metadata last marks the dataset complete.

    The metadata records the SHA-256 of the rows, so a reader that trusts the
    metadata (by its own hash, from a dataset-ready event) can trust the rows.
    """
    prefix = dataset_prefix(dataset.dataset_id)
    rows = dataset.to_parquet_bytes()
    store.put_bytes(f"{prefix}/data.parquet", rows)
    store.put_bytes(f"{prefix}/metadata.json", dataset.metadata_json(sha256_bytes(rows)))
    return store.uri(prefix)


def has_dataset(store: ArtifactStore, dataset_id: str) -> bool:
    return store.exists(f"{dataset_prefix(dataset_id)}/metadata.json")


def load_dataset(
    store: ArtifactStore, dataset_id: str, metadata_sha256: str | None = None
) -> ProcessedDataset:
    """Read and verify a stored dataset.

    Refused with a :class:`DatasetError` (permanent: reading it again gives the same
    bytes): metadata whose SHA-256 is not ``metadata_sha256`` (when given) or that
    names another dataset, rows whose SHA-256 is not the one the metadata records,
    and files that do not parse. Store outages propagate as they are.
    """
    prefix = dataset_prefix(dataset_id)
    raw_metadata = store.get_bytes(f"{prefix}/metadata.json")
    if metadata_sha256 is not None and sha256_bytes(raw_metadata) != metadata_sha256:
        raise DatasetError(
            f"dataset {dataset_id[:12]}: metadata.json does not match the SHA-256 the event "
            "claims; it was changed after preprocessing or the event is not for it"
        )
    try:
        metadata = json.loads(raw_metadata)
        stored_id = metadata["dataset_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"dataset {dataset_id[:12]}: unreadable metadata.json ({exc})") from None
    if stored_id != dataset_id:
        raise DatasetError(
            f"dataset {dataset_id[:12]}: its metadata names dataset {str(stored_id)[:12]}; "
            "a dataset is only read under its own content hash"
        )
    rows = store.get_bytes(f"{prefix}/data.parquet")
    expected = metadata.get("data_sha256")
    # Datasets written before the rows' hash was recorded carry none.
    if expected is not None and sha256_bytes(rows) != expected:
        raise DatasetError(f"dataset {dataset_id[:12]}: data.parquet does not match its metadata")
    try:
        return ProcessedDataset.from_parts(rows, metadata)
    except DatasetError:
        raise
    except Exception as exc:  # pyarrow, pandas and config errors of a corrupt file
        raise DatasetError(
            f"dataset {dataset_id[:12]}: cannot read the stored dataset "
            f"({type(exc).__name__}: {exc})"
        ) from None
