"""Generated site variants: same schema, the rewrite applied exactly where stated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slocast.adapters.datasets import load_lte
from slocast.core.config import PipelineConfig
from slocast.core.errors import DatasetError
from slocast.core.schema import FEATURE_COLUMNS, TARGET_COLUMNS
from slocast.core.synthetic import generate_lte
from slocast.core.variants import (
    BUSY_LEVEL,
    BUSY_ROWS,
    LONG_OUTAGE_ROWS,
    NOISE_SIGMA,
    SHORT_FRACTION,
    VARIANTS,
    generate_variants,
    shift_start,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    frame = generate_lte(1000, seed=2)
    frame.loc[5, "mcs_up"] = np.nan  # an empty cell must stay empty
    train, test = frame.iloc[:800], frame.iloc[800:]
    train.to_csv(root / "Site.csv", index=False)
    test.to_csv(root / "Site_test.csv", index=False)
    written = generate_variants(root / "Site.csv", root / "Site_test.csv", root / "out")
    return root, written


def _read(path):
    return pd.read_csv(path, dtype={"time": str})


def test_every_variant_keeps_the_schema_and_loads(files):
    root, written = files
    assert set(written) == set(VARIANTS)
    original = [_read(root / "Site.csv"), _read(root / "Site_test.csv")]
    for name, paths in written.items():
        for path, source in zip(paths, original, strict=True):
            frame = _read(path)
            assert list(frame.columns) == list(source.columns), name
            assert frame["time"].isin(source["time"]).all(), name
            load_lte(
                path, min_rows=20, config=PipelineConfig(max_gap_rows=VARIANTS[name].max_gap_rows)
            )
        assert paths[0].name == f"Site-{name}.csv" and paths[1].name == f"Site-{name}_test.csv"
    assert np.isnan(_read(written["original"][0]).loc[5, "mcs_up"])


def test_shift_applies_from_the_last_fifth_of_the_training_file(files):
    root, written = files
    train, test = _read(root / "Site.csv"), _read(root / "Site_test.csv")
    start = shift_start(len(train))
    assert start == 640
    for name, column, factor in (("shift-up-x0.1", "up", 0.1), ("shift-down-x10", "down", 10.0)):
        new_train, new_test = (_read(p) for p in written[name])
        np.testing.assert_array_equal(new_train[column][:start], train[column][:start])
        np.testing.assert_allclose(new_train[column][start:], train[column][start:] * factor)
        np.testing.assert_allclose(new_test[column], test[column] * factor)
        others = [c for c in FEATURE_COLUMNS if c != column]
        pd.testing.assert_frame_equal(new_train[others], train[others])
        pd.testing.assert_frame_equal(new_test[others], test[others])


def test_short_keeps_the_last_quarter_and_bursts_only_raise_up(files):
    root, written = files
    train, test = _read(root / "Site.csv"), _read(root / "Site_test.csv")
    short, short_test = (_read(p) for p in written["short-25"])
    assert len(short) == int(np.ceil(SHORT_FRACTION * len(train)))
    pd.testing.assert_frame_equal(short, train.iloc[-len(short) :].reset_index(drop=True))
    pd.testing.assert_frame_equal(short_test, test)
    bursty, bursty_test = (_read(p) for p in written["bursty-up"])
    factors = np.concatenate([bursty["up"] / train["up"], bursty_test["up"] / test["up"]])
    factors = factors[np.isfinite(factors)]
    assert factors.min() == pytest.approx(1.0) and factors.max() > 2.0
    assert 0.01 < np.mean(factors > 1.0) < 0.5
    others = [c for c in FEATURE_COLUMNS if c != "up"]
    pd.testing.assert_frame_equal(bursty[others], train[others])


def test_generation_is_deterministic(files, tmp_path):
    root, written = files
    again = generate_variants(root / "Site.csv", root / "Site_test.csv", tmp_path, ["bursty-up"])
    assert again["bursty-up"][0].read_bytes() == written["bursty-up"][0].read_bytes()
    with pytest.raises(KeyError, match="unknown variant"):
        generate_variants(root / "Site.csv", root / "Site_test.csv", tmp_path, ["nope"])


def test_test_only_shift_and_small_site(files):
    root, written = files
    train, test = _read(root / "Site.csv"), _read(root / "Site_test.csv")
    shifted, shifted_test = (_read(p) for p in written["test-shift-up-x0.1"])
    pd.testing.assert_frame_equal(shifted, train)  # validation cannot see it
    np.testing.assert_allclose(shifted_test["up"], test["up"] * 0.1)
    others = [c for c in FEATURE_COLUMNS if c != "up"]
    pd.testing.assert_frame_equal(shifted_test[others], test[others])
    small, small_test = (_read(p) for p in written["small-x0.001"])
    for new, old in ((small, train), (small_test, test)):
        for column in ("down", "up"):
            np.testing.assert_allclose(new[column], old[column] * 0.001)
        rest = [c for c in FEATURE_COLUMNS if c not in ("down", "up")]
        pd.testing.assert_frame_equal(new[rest], old[rest])


def test_busy_site_adds_a_trailing_level_to_the_targets_only(files):
    root, written = files
    busy, busy_test = (_read(p) for p in written["busy-smooth"])
    for new, old in ((busy, _read(root / "Site.csv")), (busy_test, _read(root / "Site_test.csv"))):
        for column in TARGET_COLUMNS:
            values = old[column].to_numpy(dtype=float)
            # Row i adds BUSY_LEVEL x the mean of rows max(0, i-59)..i of its own file:
            # nothing after row i, nothing from the other file.
            for i in (0, 3, BUSY_ROWS - 1, BUSY_ROWS + 7, len(old) - 1):
                past = values[max(0, i - BUSY_ROWS + 1) : i + 1]
                expected = values[i] + BUSY_LEVEL * np.nanmean(past)
                assert new[column].iloc[i] == pytest.approx(expected, rel=1e-9), (column, i)
        rest = [c for c in FEATURE_COLUMNS if c not in TARGET_COLUMNS]
        pd.testing.assert_frame_equal(new[rest], old[rest])

    # The level dwarfs the step-to-step changes: persistence is much harder to beat.
    def persistence_nrmse(y):
        return np.sqrt(np.nanmean(np.diff(y) ** 2)) / np.nanmean(y)

    train = _read(root / "Site.csv")
    for column in ("down", "up"):
        assert persistence_nrmse(busy[column].to_numpy()) < 0.5 * persistence_nrmse(
            train[column].to_numpy()
        )


def test_gaps_remove_whole_rows_that_load_back_as_empty_rows(files):
    root, written = files
    limit = VARIANTS["gaps"].max_gap_rows
    assert limit == LONG_OUTAGE_ROWS
    for path, source in zip(
        written["gaps"], (root / "Site.csv", root / "Site_test.csv"), strict=True
    ):
        old, new = _read(source), _read(path)
        kept = old["time"].isin(new["time"]).to_numpy()
        assert 0 < len(new) < len(old) and kept[0] and kept[-1]
        # Rows are removed whole; the rest are unchanged.
        pd.testing.assert_frame_equal(new, old[kept].reset_index(drop=True))
        loaded = load_lte(path, min_rows=20, config=PipelineConfig(max_gap_rows=limit))
        assert len(loaded) == len(old)
        empty = loaded[list(FEATURE_COLUMNS)].isna().all(axis=1).to_numpy()
        np.testing.assert_array_equal(empty, ~kept)
        with pytest.raises(DatasetError, match="--max-gap-rows"):
            load_lte(path, min_rows=20)
    # The training file holds the 2-hour outage, in one gap of exactly that length.
    old, new = _read(root / "Site.csv"), _read(written["gaps"][0])
    runs = np.diff(np.flatnonzero(np.r_[True, old["time"].isin(new["time"]).to_numpy(), True]))
    assert runs.max() - 1 == LONG_OUTAGE_ROWS


def test_noisy_short_is_short_25_with_mean_preserving_noise_on_volumes(files):
    _, written = files
    short, short_test = (_read(p) for p in written["short-25"])
    noisy, noisy_test = (_read(p) for p in written["noisy-short"])
    ratios = []
    for new, old in ((noisy, short), (noisy_test, short_test)):
        assert list(new["time"]) == list(old["time"])
        rest = [c for c in FEATURE_COLUMNS if c not in ("down", "up")]
        pd.testing.assert_frame_equal(new[rest], old[rest])
        for column in ("down", "up"):
            ratios.append(new[column].to_numpy() / old[column].to_numpy())
    logs = np.log(np.concatenate(ratios))
    assert logs.std() == pytest.approx(NOISE_SIGMA, rel=0.1)
    assert np.exp(logs).mean() == pytest.approx(1.0, abs=0.03)  # mean-preserving
    # Independent per row: no autocorrelation a forecaster could use.
    assert abs(np.corrcoef(logs[:-1], logs[1:])[0, 1]) < 0.1
