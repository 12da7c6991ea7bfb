"""Unit tests: the bucketed, bounded training window and its fixed splits."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.latency.features import NUM_REGIMES
from slocast.latency.window import TargetWindow


def rows(n: int, start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    values = start + np.arange(n, dtype=np.float32)
    return np.repeat(values[:, None], 3, axis=1), values.astype(np.float64) + 1.0


def test_bounded_per_regime_and_newest_kept() -> None:
    window = TargetWindow(3, capacity_per_regime=100, calibration_every=10, evaluation_every=7)
    x, y = rows(1000)
    window.add(x, y, np.zeros(1000, np.int64))
    train = window.snapshot("train")
    assert train.targets.shape[0] == 100
    # the newest training rows survived, the oldest were overwritten
    assert train.targets.min() > 800
    assert window.counts()["train"] == 100


def test_rare_regime_survives_a_flood_of_another() -> None:
    window = TargetWindow(3, capacity_per_regime=100, calibration_every=10, evaluation_every=7)
    x, y = rows(50)
    window.add(x, y, np.full(50, 5, np.int64))  # a rare burst regime
    x, y = rows(10_000, start=100)
    window.add(x, y, np.zeros(10_000, np.int64))  # then a long calm period
    counts = window.regime_counts("train")
    assert counts[5] > 30 and counts[0] == 100
    assert len(counts) == NUM_REGIMES


def test_splits_are_disjoint_fixed_and_only_observed_rows() -> None:
    window = TargetWindow(3, capacity_per_regime=10_000, calibration_every=10, evaluation_every=7)
    x, y = rows(700)
    y[::2] = 0.0  # unobserved: must be ignored
    window.add(x, y, np.zeros(700, np.int64))
    parts = {
        s: set(window.snapshot(s).targets.tolist()) for s in ("train", "calibration", "evaluation")
    }
    assert sum(len(p) for p in parts.values()) == 350
    assert not parts["train"] & parts["calibration"]
    assert not parts["train"] & parts["evaluation"]
    assert not parts["calibration"] & parts["evaluation"]
    assert 30 <= len(parts["calibration"]) <= 40 and 45 <= len(parts["evaluation"]) <= 55
    assert 0.0 not in parts["train"]


def test_clear_reports_and_resets_new_count() -> None:
    window = TargetWindow(3, capacity_per_regime=1000, calibration_every=10, evaluation_every=7)
    x, y = rows(200)
    window.add(x, y, np.zeros(200, np.int64))
    assert window.added_since_snapshot > 0
    dropped = window.clear(("calibration", "evaluation"))
    assert dropped["calibration"] > 0 and window.counts()["train"] > 0
    dropped = window.clear()
    assert dropped["train"] > 0 and window.counts() == {
        "train": 0,
        "calibration": 0,
        "evaluation": 0,
    }
    assert window.added_since_snapshot == 0


def test_rejects_colliding_split_periods() -> None:
    with pytest.raises(ValueError):
        TargetWindow(3, 100, calibration_every=7, evaluation_every=7)
