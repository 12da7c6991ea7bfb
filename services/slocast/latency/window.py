"""Bounded training window per target, bucketed by load regime, newest kept.

A plain sliding window forgets rare regimes (a burst of deep queues) as soon as a
calm hour follows. Here every regime (queue depth x KV usage, see
:func:`slocast.latency.features.regimes`) has its own ring buffer, so the window
holds the newest ``capacity`` samples *of each regime* and memory stays bounded at
``NUM_REGIMES x capacity`` rows per target whatever the stream does.

Samples are split on arrival, deterministically by arrival number, into:

- training rows (fit the trees),
- calibration rows (fit conformal offsets; never trained on),
- evaluation rows (compare a candidate with the serving model; never trained on,
  by any model version; a promoted candidate's offsets are refitted on them and
  the calibration rows together, after the comparison).

Because the split is fixed per sample, no model is ever evaluated or calibrated on
rows it was fitted on, across retrains too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from slocast.latency.features import NUM_REGIMES

SPLITS = ("train", "calibration", "evaluation")


class _Ring:
    """Newest ``capacity`` rows of fixed width, oldest overwritten first."""

    def __init__(self, capacity: int, width: int) -> None:
        self.rows = np.empty((capacity, width), dtype=np.float32)
        self.targets = np.empty(capacity, dtype=np.float64)
        self.capacity = capacity
        self.size = 0
        self.next = 0

    def extend(self, rows: np.ndarray, targets: np.ndarray) -> None:
        if rows.shape[0] > self.capacity:  # only the newest can survive anyway
            rows, targets = rows[-self.capacity :], targets[-self.capacity :]
        n = rows.shape[0]
        idx = (self.next + np.arange(n)) % self.capacity
        self.rows[idx] = rows
        self.targets[idx] = targets
        self.next = (self.next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rows[: self.size], self.targets[: self.size]


@dataclass(frozen=True)
class Snapshot:
    """Copies of one split for one target (safe to use outside the lock)."""

    features: np.ndarray
    targets: np.ndarray
    regimes: np.ndarray


class TargetWindow:
    """The bucketed window of one target (TTFT or TPOT). Thread-safe."""

    def __init__(
        self,
        width: int,
        capacity_per_regime: int,
        calibration_every: int,
        evaluation_every: int,
    ) -> None:
        if calibration_every < 2 or evaluation_every < 2 or calibration_every == evaluation_every:
            raise ValueError("calibration_every and evaluation_every must differ and be >= 2")
        self._lock = threading.Lock()
        self._width = width
        self._capacity = capacity_per_regime
        self._every = {"calibration": calibration_every, "evaluation": evaluation_every}
        self._rings: dict[str, list[_Ring]] = {}
        self._arrivals = 0
        self.added_since_snapshot = 0
        self.clear()

    def clear(self, splits: tuple[str, ...] = SPLITS) -> dict[str, int]:
        """Drop the given splits; returns how many rows each held."""
        with self._lock:
            dropped = {}
            for split in splits:
                old = self._rings.get(split, [])
                dropped[split] = sum(r.size for r in old)
                # Held-out buffers are smaller: they only need enough rows per regime
                # for stable order statistics.
                cap = self._capacity if split == "train" else max(self._capacity // 4, 64)
                self._rings[split] = [_Ring(cap, self._width) for _ in range(NUM_REGIMES)]
            if "train" in splits:
                self.added_since_snapshot = 0
            return dropped

    def add(self, features: np.ndarray, targets: np.ndarray, regime_ids: np.ndarray) -> None:
        """Add rows (only those with an observed target, i.e. > 0)."""
        observed = targets > 0
        if not observed.any():
            return
        features, targets, regime_ids = features[observed], targets[observed], regime_ids[observed]
        with self._lock:
            arrival = self._arrivals + np.arange(targets.shape[0])
            self._arrivals += targets.shape[0]
            split = np.zeros(targets.shape[0], dtype=np.int8)
            # Evaluation wins ties so the evaluation stream never thins out.
            split[arrival % self._every["calibration"] == 0] = 1
            split[arrival % self._every["evaluation"] == 0] = 2
            for code, name in enumerate(SPLITS):
                mask = split == code
                if not mask.any():
                    continue
                for regime in np.unique(regime_ids[mask]):
                    sel = mask & (regime_ids == regime)
                    self._rings[name][int(regime)].extend(features[sel], targets[sel])
            self.added_since_snapshot += int((split == 0).sum())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {name: sum(r.size for r in rings) for name, rings in self._rings.items()}

    def regime_counts(self, split: str = "train") -> list[int]:
        with self._lock:
            return [r.size for r in self._rings[split]]

    def snapshot(self, split: str, *, reset_new: bool = False) -> Snapshot:
        with self._lock:
            parts = [(r.view(), regime) for regime, r in enumerate(self._rings[split]) if r.size]
            if reset_new:
                self.added_since_snapshot = 0
            if not parts:
                return Snapshot(
                    np.empty((0, self._width), np.float32), np.empty(0), np.empty(0, np.int64)
                )
            features = np.concatenate([p[0][0] for p in parts])
            targets = np.concatenate([p[0][1] for p in parts])
            regime_ids = np.concatenate([np.full(p[0][1].shape[0], p[1], np.int64) for p in parts])
            return Snapshot(features, targets.copy(), regime_ids)
