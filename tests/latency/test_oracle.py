"""The synthetic workloads' exact conditional quantile, and protocol B's oracle row."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.metrics import coverage, pinball_loss
from slocast.latency.model import TARGET_COLUMNS, TARGET_PARAMS
from slocast.latency.protocol import run_protocol_b, split
from slocast.latency.synthetic import WORKLOADS, conditional_quantile_ms, generate


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("target", ["ttft", "tpot"])
def test_conditional_quantile_is_the_quantile(workload: str, target: str) -> None:
    """On 200k rows the oracle covers q, and scaling it either way costs pinball:
    it is the minimiser a model is compared with."""
    cols = generate(workload, 200_000, seed=3, slowdown=1.7)
    y = cols[TARGET_COLUMNS[target]]
    seen = y > 0
    for q in (0.5, 0.9):
        bound = conditional_quantile_ms(target, cols, q, slowdown=1.7)[seen]
        assert abs(coverage(y[seen], bound) - q) < 0.005
        best = pinball_loss(y[seen], bound, q)
        for factor in (0.97, 1.03):
            assert pinball_loss(y[seen], factor * bound, q) > best


def test_conditional_quantile_refuses_what_it_cannot_know() -> None:
    cols = generate("sharegpt-like", 10, seed=0)
    with pytest.raises(ValueError, match="unknown target"):
        conditional_quantile_ms("e2e", cols, 0.9)
    with pytest.raises(ValueError, match="quantile"):
        conditional_quantile_ms("ttft", cols, 1.0)


@pytest.mark.parametrize("inner_cv", [False, True])
def test_protocol_b_scores_the_oracle_on_the_rows_the_models_are_scored_on(
    inner_cv: bool,
) -> None:
    cols = generate("long-prompts", 900, seed=5)
    oracle = {"tpot": conditional_quantile_ms("tpot", cols, 0.9)}
    report = run_protocol_b(
        cols,
        seeds=2,
        params={"tpot": TARGET_PARAMS["tpot"]},
        inner_cv=inner_cv,
        targets=("tpot",),
        oracle=oracle,
    )
    y = cols["actual_tpot_ms"]
    seen = y > 0
    y, bound = y[seen], oracle["tpot"][seen]
    rows = [split(y.shape[0], seed)[0 if inner_cv else 1] for seed in range(2)]
    expected = [pinball_loss(y[r], bound[r], 0.9) for r in rows]
    got = report["tpot"]["oracle"]
    assert got["pinball"]["mean"] == pytest.approx(np.mean(expected))
    assert got["pinball"]["std"] == pytest.approx(np.std(expected))
    assert got["coverage"]["mean"] == pytest.approx(
        np.mean([coverage(y[r], bound[r]) for r in rows])
    )
    assert (
        "oracle"
        not in run_protocol_b(
            cols, seeds=1, params={"tpot": TARGET_PARAMS["tpot"]}, targets=("tpot",)
        )["tpot"]
    )


def test_bench_latency_reports_the_oracle_of_a_synthetic_workload(tmp_path, capsys) -> None:
    import json

    from slocast.cli import main

    out = tmp_path / "protocol-b.json"
    argv = ["bench", "latency", "--synthetic", "sharegpt-like", "--rows", "800", "--seeds", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for target in ("ttft", "tpot"):
        models = report[target]
        ratio = models["oracle"]["pinball"]["mean"] / models["reference"]["pinball"]["mean"]
        assert models["oracle_ratio"] == pytest.approx(ratio)
    assert "pinball ratio oracle/reference" in capsys.readouterr().out
