"""The processed dataset: one contiguous, split-labelled series plus its fitted spec."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from slocast.core.config import PipelineConfig
from slocast.core.features import FeatureSpec, fill_missing, gather_targets, window_ends
from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ProcessedDataset:
    """All rows of a run in time order, each labelled train, val or test.

    ``raw`` keeps NaN where a cell was not observed (truth is never imputed);
    ``values`` applies the NaN rule and is what models read as inputs (build with
    :meth:`of`, which derives it).
    """

    dataset_id: str
    config: PipelineConfig
    spec: FeatureSpec
    times: np.ndarray
    raw: np.ndarray
    split: np.ndarray
    sources: dict
    values: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def of(
        cls,
        *,
        dataset_id: str,
        config: PipelineConfig,
        spec: FeatureSpec,
        times: np.ndarray,
        raw: np.ndarray,
        split: np.ndarray,
        sources: dict,
    ) -> ProcessedDataset:
        """A dataset whose model inputs are ``raw`` under the NaN rule."""
        return cls(dataset_id, config, spec, times, raw, split, sources, fill_missing(raw))

    def rows(self, name: str) -> np.ndarray:
        """Row positions of one split."""
        return np.flatnonzero(self.split == SPLITS.index(name))

    def ends(self, name: str) -> np.ndarray:
        """Window ends whose inputs and whole horizon lie inside the split."""
        rows = self.rows(name)
        if rows.size == 0:
            return rows
        local = window_ends(rows.size, self.config.window, self.config.horizon)
        return rows[0] + local

    def truth(self, ends: np.ndarray) -> np.ndarray:
        """Observed targets (NaN where missing), shape (N, horizon, K)."""
        return gather_targets(self.raw, ends, self.config.horizon)

    def summary(self) -> dict:
        return {
            "id": self.dataset_id,
            "train_rows": int(self.rows("train").size),
            "val_rows": int(self.rows("val").size),
            "test_rows": int(self.rows("test").size),
            "train_windows": int(self.ends("train").size),
            "val_windows": int(self.ends("val").size),
            "test_windows": int(self.ends("test").size),
            # Rows with no observed cell: gaps filled on loading (max_gap_rows) or
            # empty lines of the file; never scored.
            "empty_rows": {
                name: int(np.isnan(self.raw[self.rows(name)]).all(axis=1).sum()) for name in SPLITS
            },
            "sources": self.sources,
        }

    # Serialisation: Parquet for the rows, JSON for everything else.
    def to_parquet_bytes(self) -> bytes:
        frame = pd.DataFrame(self.raw, columns=list(FEATURE_COLUMNS))
        frame.insert(0, TIME_COLUMN, self.times)
        frame["split"] = np.asarray(SPLITS)[self.split]
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()

    def metadata(self) -> dict:
        return {
            "dataset_id": self.dataset_id,
            "config": self.config.to_dict(),
            "spec": self.spec.to_dict(),
            "summary": self.summary(),
        }

    @classmethod
    def from_parts(cls, parquet: bytes, metadata: dict) -> ProcessedDataset:
        frame = pd.read_parquet(io.BytesIO(parquet))
        split = pd.Categorical(frame["split"], categories=list(SPLITS)).codes.astype(np.int8)
        return cls.of(
            dataset_id=metadata["dataset_id"],
            config=PipelineConfig.from_dict(metadata["config"]),
            spec=FeatureSpec.from_dict(metadata["spec"]),
            times=frame[TIME_COLUMN].to_numpy().astype("datetime64[ns]"),
            raw=frame[list(FEATURE_COLUMNS)].to_numpy(np.float64),
            split=split,
            sources=metadata["summary"]["sources"],
        )

    def metadata_json(self, data_sha256: str) -> bytes:
        """The metadata file; ``data_sha256``: SHA-256 of the rows' Parquet file."""
        metadata = {**self.metadata(), "data_sha256": data_sha256}
        return json.dumps(metadata, indent=2, sort_keys=True).encode()
