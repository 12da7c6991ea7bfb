"""`slocast bench sites` on a small synthetic site: every variant runs protocol A."""

from __future__ import annotations

import math

import pytest

from slocast.core.synthetic import generate_lte
from slocast.runtime.sites_bench import run_sites


@pytest.mark.slow
def test_gaps_variant_runs_with_its_gap_allowance(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOCAST_HOME", str(tmp_path / "home"))
    frame = generate_lte(2600, seed=5)
    frame.iloc[:2000].to_csv(tmp_path / "Cell.csv", index=False)
    frame.iloc[2000:].to_csv(tmp_path / "Cell_test.csv", index=False)
    lines: list[str] = []
    result = run_sites(
        tmp_path / "Cell.csv",
        tmp_path / "Cell_test.csv",
        variants=["original", "gaps"],
        models=["xgboost"],
        keep_dir=tmp_path / "keep",
        echo=lines.append,
    )
    original, gaps = result["variants"]["original"], result["variants"]["gaps"]
    assert not any(original["empty_rows"].values())
    # The 2-hour outage sits in the middle of the training file; gaps lie in both files.
    assert gaps["empty_rows"]["train"] >= 60 and gaps["empty_rows"]["test"] > 0
    assert gaps["test_windows"] == original["test_windows"] == 600 - 10
    for summary in (original, gaps):
        assert not summary["failures"]
        for family in ("persistence", "xgboost"):
            assert math.isfinite(summary["families"][family]["nrmse"]), family
    assert "empty rows train" in lines[1] and "empty rows" not in lines[0]
