"""Processed datasets in the artifact store, under their content hash."""

from __future__ import annotations

import json

from slocast.adapters.storage import ArtifactStore
from slocast.preprocess.dataset import ProcessedDataset


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def save_dataset(store: ArtifactStore, dataset: ProcessedDataset) -> str:
    """Write rows then metadata; metadata last marks the dataset complete."""
    prefix = dataset_prefix(dataset.dataset_id)
    store.put_bytes(f"{prefix}/data.parquet", dataset.to_parquet_bytes())
    store.put_bytes(f"{prefix}/metadata.json", dataset.metadata_json())
    return store.uri(prefix)


def has_dataset(store: ArtifactStore, dataset_id: str) -> bool:
    return store.exists(f"{dataset_prefix(dataset_id)}/metadata.json")


def load_dataset(store: ArtifactStore, dataset_id: str) -> ProcessedDataset:
    prefix = dataset_prefix(dataset_id)
    metadata = json.loads(store.get_bytes(f"{prefix}/metadata.json"))
    return ProcessedDataset.from_parts(store.get_bytes(f"{prefix}/data.parquet"), metadata)
