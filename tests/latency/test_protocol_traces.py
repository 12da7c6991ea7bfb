"""``slocast bench latency --data`` on traces unlike the ShareGPT one: a target
never observed, too few rows, a constant target. Each gets a clear answer,
never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slocast.cli import main
from slocast.latency.simulator import REGIME_NAMES, write_trace
from slocast.latency.synthetic import WORKLOADS, generate


def _trace(tmp_path: Path, rows: int, edit=None) -> Path:
    cols = generate("sharegpt-like", rows, seed=4)
    if edit is not None:
        edit(cols)
    path = tmp_path / "trace.jsonl"
    write_trace(cols, path)
    return path


def _bench(path: Path, out: Path) -> int:
    return main(["bench", "latency", "--data", str(path), "--seeds", "1", "--json", str(out)])


def test_a_trace_observing_ttft_only_scores_ttft_and_says_why_tpot_is_not(
    tmp_path: Path, capsys
) -> None:
    """A prefill pod's trace observes no TPOT: TTFT is still scored."""

    def ttft_only(cols: dict) -> None:
        cols["actual_tpot_ms"][:] = 0

    out = tmp_path / "report.json"
    assert _bench(_trace(tmp_path, 600, ttft_only), out) == 0
    report = json.loads(out.read_text())
    assert report["tpot"] == {
        "skipped": "only 0 rows observe tpot (actual_tpot_ms > 0); protocol B needs 50"
    }
    assert report["ttft"]["slocast"]["pinball"]["mean"] > 0
    assert report["ttft"]["ratio"] > 0
    assert "tpot  not scored: only 0 rows observe tpot" in capsys.readouterr().out


def test_a_trace_too_small_for_any_target_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert _bench(_trace(tmp_path, 60), tmp_path / "report.json") == 2
    err = capsys.readouterr().err
    assert "rows observe ttft (actual_ttft_ms > 0); protocol B needs 50" in err
    assert "rows observe tpot" in err
    assert "Traceback" not in err
    assert not (tmp_path / "report.json").exists()


def test_a_constant_target_has_no_ratio_rather_than_a_crash(tmp_path: Path, capsys) -> None:
    """A constant TPOT is predicted exactly by the reference: pinball 0 on both
    sides, and a ratio of 0 by 0 does not exist."""

    def constant_tpot(cols: dict) -> None:
        tpot = cols["actual_tpot_ms"]
        tpot[tpot > 0] = 25.0

    out = tmp_path / "report.json"
    assert _bench(_trace(tmp_path, 600, constant_tpot), out) == 0
    report = json.loads(out.read_text())
    assert report["tpot"]["reference"]["pinball"]["mean"] == 0
    assert report["tpot"]["ratio"] is None
    assert report["tpot"]["slocast"]["coverage"]["mean"] == pytest.approx(1.0)
    assert np.isfinite(report["ttft"]["ratio"])
    assert "n/a (reference pinball 0)" in capsys.readouterr().out


def test_the_help_names_every_simulated_regime_and_synthetic_workload(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "latency", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens too
    for name in (*REGIME_NAMES, *WORKLOADS):
        assert name in text
