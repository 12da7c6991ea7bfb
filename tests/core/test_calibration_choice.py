"""Per-target calibration variants: per-cell bins, chosen on held-out validation rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from slocast.core.config import PipelineConfig
from slocast.core.conformal import Calibration
from slocast.core.synthetic import generate_lte
from slocast.preprocess.stage import preprocess
from slocast.train.calibration_choice import CHOICE_LEVEL, choose_bins
from slocast.train.stage import change_bins, train_family


def _case(n: int = 3000, seed: int = 0):
    """Target 0: noise is large after a predicted rise (change > 0.5), small otherwise,
    and the share of rises grows from half to all in the last third (bins matter).
    Target 1: plain noise (bins do not)."""
    rng = np.random.default_rng(seed)
    change = rng.uniform(-1, 1, size=(n, 1, 2))
    early = 2 * n // 3
    rises = rng.uniform(0.5, 1, size=(n, 1))
    change[:, :, 0] = np.where(np.arange(n)[:, None] >= early, rises, change[:, :, 0])
    noise = rng.normal(size=(n, 1, 2))
    noise[..., 0] *= np.where(change[..., 0] > 0.5, 3.0, 0.2)
    prediction = np.full((n, 1, 2), 10.0)
    return prediction + noise, prediction, np.ones((n, 1, 2)), change


def test_per_cell_bins_match_the_single_count_fits():
    truth, pred, scale, change = _case()
    mixed = Calibration.fit(
        truth, pred, (0.9,), scale=scale, group_by=change, bins=np.array([3, 1])
    )
    three = Calibration.fit(truth, pred, (0.9,), scale=scale, group_by=change, bins=3)
    pooled = Calibration.fit(truth, pred, (0.9,), scale=scale)
    got = mixed.upper(pred, 0.9, scale, change)
    np.testing.assert_allclose(got[..., 0], three.upper(pred, 0.9, scale, change)[..., 0])
    np.testing.assert_allclose(got[..., 1], pooled.upper(pred, 0.9, scale)[..., 1])
    # Same stored format: one table of edges, serialisable and reloaded identically.
    again = Calibration.from_dict(mixed.to_dict())
    np.testing.assert_array_equal(again.upper(pred, 0.9, scale, change), got)


def test_bins_are_chosen_by_held_out_coverage():
    truth, pred, scale, change = _case()
    bins, held_out = choose_bins(
        truth, pred, scale, change, default_bins=5, bins_for_rows=change_bins
    )
    assert bins.shape == (2,)
    gaps = {int(b): np.abs(np.asarray(c) - CHOICE_LEVEL) for b, c in held_out.items()}
    for k in range(2):
        best = min(g[k] for g in gaps.values())
        assert gaps[int(bins[k])][k] == best
    # Bins fix target 0's shifting mix; pooled misses it on the held-out rows.
    assert bins[0] > 1 and gaps[1][0] > 0.02


def test_too_few_held_out_rows_keep_the_default():
    truth, pred, scale, change = _case(n=600)
    bins, held_out = choose_bins(
        truth, pred, scale, change, default_bins=1, bins_for_rows=change_bins
    )
    assert bins.tolist() == [1, 1] and held_out == {}


def test_the_pipeline_chooses_on_validation_only():
    data = preprocess(generate_lte(4000, seed=2), None, PipelineConfig())
    first = train_family(data, "xgboost", seed=0)
    raw = data.raw.copy()
    rows = data.rows("test")
    raw[rows] = np.random.default_rng(1).permutation(raw[rows]) * 5.0
    second = train_family(replace(data, raw=raw), "xgboost", seed=0)
    info = first.bundle.info
    assert set(info["calibration_bins"]) == {"rnti_count", "rb_down", "rb_up", "down", "up"}
    assert info["calibration_bins"] == second.bundle.info["calibration_bins"]
    assert first.bundle.calibration.to_dict() == second.bundle.calibration.to_dict()
