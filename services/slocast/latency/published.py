"""The published model as the training server exposes it (upstream model endpoints).

Routers and operators of the upstream llm-d predictor read models from the training
server: ``/models/list``, ``/model/{name}/info|download``, per-tree dumps at
``/model/{ttft,tpot}/xgb/json`` and feature importances in ``/metrics``. Here they
all describe the bundle the predictors serve (the one ``CURRENT`` points to, with
every file's SHA-256 verified), not the trainer's in-memory candidates.

``/model/{target}/download`` is one JSON document per target (no pickle, no
``.joblib``): the XGBoost model (XGBoost's own JSON format), how its raw output
becomes milliseconds, and the conformal calibration that turns it into the served
P-quantile. The tree dumps alone give the raw score; the served bound also needs
the output transform and the regime offsets, which is why the prediction server,
not a local tree walk, is the recommended client.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from slocast.latency.bundle import BundleError, read_manifest, read_pointer
from slocast.latency.features import FEATURE_NAMES
from slocast.latency.model import LOG_OBJECTIVES, TARGETS, TargetModel, load_target_model

DOCUMENT_FORMAT = "slocast-latency-target/2"
# Listed for compatibility with the upstream API: slocast never builds the
# upstream's gated (queue/no-queue) ensemble models, so these never exist.
GATED_MODELS = ("ttft_gated", "tpot_gated")
MODEL_NAMES = (*TARGETS, *GATED_MODELS)


@dataclass
class PublishedModel:
    """One verified published bundle; derived documents are built once, lazily."""

    version: str
    published_at: datetime
    targets: dict[str, TargetModel]
    _documents: dict[str, bytes] = field(default_factory=dict, repr=False)
    _dumps: dict[str, bytes] = field(default_factory=dict, repr=False)
    _importances: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def document(self, target: str) -> bytes:
        """The downloadable model of ``target`` (see the module docstring)."""
        if target not in self._documents:
            model = self.targets[target]
            doc = {
                "format": DOCUMENT_FORMAT,
                "target": target,
                "model_version": self.version,
                "quantile": model.quantile,
                "objective": model.objective,
                "features": list(FEATURE_NAMES),
                "raw_output": "log_ms" if model.objective in LOG_OBJECTIVES else "ms",
                "bound": "point = max(exp(raw) if raw_output == 'log_ms' else raw, "
                "point_floor_ms); upper = max(point + scale * offset[regime], 0) with scale "
                "= calibration.fixed_scale if present, else max(point, 1e-3)",
                "point_floor_ms": model.point_floor_ms,
                "calibration": model.calibration.to_dict(),
                "xgboost_model": json.loads(bytes(model.booster.save_raw("json"))),
            }
            self._documents[target] = json.dumps(doc, separators=(",", ":")).encode()
        return self._documents[target]

    def tree_dump(self, target: str) -> bytes:
        """A JSON array with one object per tree (XGBoost ``get_dump`` JSON)."""
        if target not in self._dumps:
            trees = self.targets[target].booster.get_dump(dump_format="json")
            self._dumps[target] = b"[" + b",".join(t.encode() for t in trees) + b"]"
        return self._dumps[target]

    def importances(self, target: str) -> dict[str, float]:
        """Share of total split gain per feature (0 for unused features)."""
        if target not in self._importances:
            gains = self.targets[target].booster.get_score(importance_type="total_gain")
            total = float(sum(gains.values())) or 1.0
            self._importances[target] = {
                name: float(gains.get(name, 0.0)) / total for name in FEATURE_NAMES
            }
        return self._importances[target]


class PublishedModels:
    """Follows ``CURRENT`` in ``model_dir``; one verified load per published version."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._lock = threading.Lock()
        self._cached: PublishedModel | None = None

    def current(self) -> PublishedModel | None:
        """The published model, or None when nothing (readable) is published."""
        try:
            pointer = read_pointer(self.model_dir)
        except BundleError:
            return None
        if pointer is None:
            return None
        with self._lock:
            if self._cached is not None and self._cached.version == pointer.version:
                return self._cached
            try:
                bundle, manifest = read_manifest(self.model_dir, pointer)
                targets = {t: load_target_model(bundle, t, manifest["targets"][t]) for t in TARGETS}
                mtime = (bundle / "manifest.json").stat().st_mtime
            except (BundleError, OSError, ValueError, KeyError):
                # Pruned or replaced while reading: the next call sees the new one.
                return self._cached
            self._cached = PublishedModel(
                pointer.version, datetime.fromtimestamp(mtime, UTC), targets
            )
            return self._cached


def model_file_info(published: PublishedModel | None, name: str) -> dict:
    """``exists``, ``size_bytes`` and ``last_modified`` of one listed model."""
    if published is None or name not in TARGETS:
        return {"exists": False, "size_bytes": 0, "last_modified": None}
    return {
        "exists": True,
        "size_bytes": len(published.document(name)),
        "last_modified": published.published_at.isoformat(),
    }


def regime_counts_by_bucket(counts: list[int], kv_buckets: int) -> dict[tuple[int, int], int]:
    """Per-regime row counts keyed by (queue bucket, KV bucket)."""
    arr = np.asarray(counts).reshape(-1, kv_buckets)
    return {
        (int(q), int(c)): int(arr[q, c]) for q in range(arr.shape[0]) for c in range(kv_buckets)
    }
