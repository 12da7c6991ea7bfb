"""Conformal calibration: finite-sample coverage, signed residuals, variants."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.conformal import (
    AdaptiveConformal,
    Calibration,
    MondrianCalibration,
    conformal_offset,
    rank_for,
)


def test_rank_is_the_finite_sample_order_statistic():
    assert rank_for(0.9, 99) == 90  # ceil(0.9 * 100)
    assert rank_for(0.9, 100) == 91  # ceil(90.9)
    assert rank_for(0.99, 10) == 10  # capped at n
    residuals = np.arange(1.0, 101.0)  # 1..100
    assert conformal_offset(residuals, 0.9) == 91.0  # not an interpolated 90.1
    with pytest.raises(ValueError):
        rank_for(1.0, 10)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95])
def test_coverage_holds_over_many_trials(q):
    rng = np.random.default_rng(42)
    trials, n_cal, n_test = 400, 200, 200
    covered = np.empty(trials)
    for t in range(trials):
        noise = (
            rng.standard_t(df=4, size=n_cal + n_test) * 3.0 + 1.0
        )  # skewed location, heavy tails
        cal, test = noise[:n_cal], noise[n_cal:]
        calibration = Calibration.fit(cal[:, None], np.zeros((n_cal, 1)), [q])
        covered[t] = np.mean(test <= calibration.upper(np.zeros((n_test, 1)), q)[:, 0])
    # Marginal guarantee: q <= E[coverage] <= q + 1/(n+1); the mean over 400 trials is tight.
    assert q - 0.01 <= covered.mean() <= q + 1.0 / (n_cal + 1) + 0.01


def test_signed_residuals_do_not_overcover_like_absolute_ones():
    rng = np.random.default_rng(0)
    cal, test = rng.normal(size=5000), rng.normal(size=20000)
    signed = conformal_offset(cal, 0.9)
    absolute = conformal_offset(np.abs(cal), 0.9)
    assert np.mean(test <= signed) == pytest.approx(0.9, abs=0.01)
    assert np.mean(test <= absolute) == pytest.approx(0.95, abs=0.01)  # the anchor's mistake


def test_offsets_per_step_and_target_and_serialisation():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(500, 2, 3)) * np.array([1.0, 10.0, 100.0])
    calibration = Calibration.fit(y, np.zeros_like(y), [0.5, 0.9])
    assert calibration.offsets[0.9].shape == (2, 3)
    assert calibration.offsets[0.9][0, 2] > calibration.offsets[0.9][0, 0] * 10
    back = Calibration.from_dict(calibration.to_dict())
    np.testing.assert_array_equal(back.offsets[0.9], calibration.offsets[0.9])
    with pytest.raises(KeyError, match="available"):
        calibration.upper(np.zeros((1, 2, 3)), 0.99)


def test_nan_truth_is_ignored():
    residuals = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 6.0]])
    offsets = conformal_offset(residuals, 0.5)
    assert offsets.tolist() == [2.0, 6.0]  # rank ceil(0.5*4)=2 of [1,2,3]; of [5,6] capped at 2


def test_mondrian_holds_coverage_in_every_regime():
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 3, size=30000)
    noise = rng.normal(size=groups.size) * np.array([0.5, 2.0, 8.0])[groups]
    cal, test = slice(0, 15000), slice(15000, None)
    pooled = conformal_offset(noise[cal], 0.9)
    mondrian = MondrianCalibration.fit(noise[cal], groups[cal], 0.9)
    upper = mondrian.upper(np.zeros(15000), groups[test])
    for g in range(3):
        mask = groups[test] == g
        assert np.mean(noise[test][mask] <= upper[mask]) == pytest.approx(0.9, abs=0.02)
    # The pooled offset misses badly in the noisiest regime: why Mondrian exists.
    assert np.mean(noise[test][groups[test] == 2] <= pooled) < 0.8
    back = MondrianCalibration.from_dict(mondrian.to_dict())
    assert back.per_group == mondrian.per_group


def test_adaptive_conformal_recovers_coverage_after_drift():
    rng = np.random.default_rng(3)
    aci = AdaptiveConformal(0.9, gamma=0.01, window=500)
    aci.seed(rng.normal(size=500))
    hits = []
    for _ in range(6000):
        r = rng.normal() * 3.0  # the noise tripled after calibration
        hits.append(r <= aci.offset)
        aci.update(np.array([r]))
    assert np.mean(hits[-3000:]) == pytest.approx(0.9, abs=0.03)


def test_normalised_offsets_hold_coverage_when_noise_scales_with_level():
    rng = np.random.default_rng(9)
    level = rng.choice([1.0, 10.0], size=40000, p=[0.5, 0.5])
    y = level * (1 + 0.3 * rng.normal(size=level.size))
    cal, test = slice(0, 20000), slice(20000, None)
    point = level  # a perfect mean model
    scale = level[:, None]
    normalised = Calibration.fit(y[cal, None], point[cal, None], [0.9], scale=scale[cal])
    upper = normalised.upper(point[test, None], 0.9, scale[test])[:, 0]
    for lv in (1.0, 10.0):
        mask = level[test] == lv
        assert np.mean(y[test][mask] <= upper[mask]) == pytest.approx(0.9, abs=0.015)
    pooled = Calibration.fit(y[cal, None], point[cal, None], [0.9])
    low = level[test] == 1.0
    pooled_upper = pooled.upper(point[test, None], 0.9)[:, 0]
    assert np.mean(y[test][low] <= pooled_upper[low]) > 0.97  # pooled over-covers quiet rows...
    assert np.mean(y[test][~low] <= pooled_upper[~low]) < 0.85  # ...and under-covers busy ones
    with pytest.raises(ValueError, match="normalised"):
        normalised.upper(point[:3, None], 0.9)
    assert Calibration.from_dict(normalised.to_dict()).normalised


def test_change_bins_hold_coverage_when_the_regime_mix_shifts():
    """Residual bias depends on a per-forecast variable; serving sees another mix of it."""
    rng = np.random.default_rng(11)

    def draw(n: int, share_high: float) -> tuple[np.ndarray, np.ndarray]:
        change = np.where(
            rng.random(n) < share_high, rng.normal(2.0, 0.3, n), rng.normal(-2, 0.3, n)
        )
        # Forecasts of a fall (change < 0) are too low and noisy; of a rise, close.
        residual = np.where(change < 0, 1.0 + 2.0 * rng.normal(size=n), 0.2 * rng.normal(size=n))
        return change[:, None, None], residual[:, None, None]

    cal_change, cal_res = draw(20000, share_high=0.8)
    test_change, test_res = draw(20000, share_high=0.2)  # mostly falls when served
    point = np.zeros_like(test_res)
    grouped = Calibration.fit(cal_res, np.zeros_like(cal_res), [0.9], group_by=cal_change, bins=5)
    assert grouped.grouped and grouped.edges.shape == (4, 1, 1)
    covered = test_res <= grouped.upper(point, 0.9, group_by=test_change)
    assert covered.mean() == pytest.approx(0.9, abs=0.015)
    for side in (test_change < 0, test_change >= 0):
        assert covered[side].mean() == pytest.approx(0.9, abs=0.02)
    pooled = Calibration.fit(cal_res, np.zeros_like(cal_res), [0.9])
    assert (test_res <= pooled.upper(point, 0.9)).mean() < 0.8  # pooled misses under the shift
    back = Calibration.from_dict(grouped.to_dict())
    np.testing.assert_array_equal(
        back.upper(point, 0.9, group_by=test_change),
        grouped.upper(point, 0.9, group_by=test_change),
    )
    with pytest.raises(ValueError, match="group"):
        grouped.upper(point, 0.9)


def test_small_bins_fall_back_to_the_pooled_offset():
    rng = np.random.default_rng(2)
    res = rng.normal(size=(300, 1, 2))
    change = rng.normal(size=(300, 1, 2))
    calibration = Calibration.fit(
        res, np.zeros_like(res), [0.9], group_by=change, bins=5, min_group_size=100
    )
    # 60 residuals per bin < 100: every bin uses the pooled offset of its cell.
    np.testing.assert_array_equal(
        calibration.group_offsets[0.9], np.broadcast_to(calibration.offsets[0.9], (5, 1, 2))
    )


def test_adaptive_conformal_window_matches_a_sorted_recomputation():
    # The sorted window is an optimisation: every offset must equal the order
    # statistic recomputed from the last `window` residuals at the running level.
    rng = np.random.default_rng(5)
    aci = AdaptiveConformal(0.9, gamma=0.02, window=50)
    aci.seed(rng.normal(size=80))
    seen = list(aci._arrivals)
    alpha = aci.alpha
    for batch in (rng.normal(size=7) * 2, np.array([np.nan, np.inf, 0.5]), rng.normal(size=120)):
        for r in batch[np.isfinite(batch)]:
            level = min(max(1.0 - alpha, 1e-6), 1.0 - 1e-6)
            expected = conformal_offset(np.array(seen), level)
            assert aci.offset == pytest.approx(float(expected))
            alpha += 0.02 * (0.1 - float(r > expected))
            seen = (seen + [float(r)])[-50:]
            aci.update(np.array([r]))
        assert len(aci) == len(seen)
    aci2 = AdaptiveConformal(0.9, gamma=0.02, window=50)
    aci2.seed(rng.normal(size=80))
    batch = rng.normal(size=300)
    aci3 = AdaptiveConformal(0.9, gamma=0.02, window=50)
    aci3.seed(np.array(list(aci2._arrivals)))
    aci2.update(batch)  # one call with many residuals = one call per residual
    for r in batch:
        aci3.update(np.array([r]))
    assert aci2.offset == aci3.offset and aci2.alpha == pytest.approx(aci3.alpha)
