"""`slocast run` end to end on small synthetic data, as a user runs it."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

REPORT_MODELS = {
    "persistence",
    "seasonal_naive",
    "xgboost",
    "gru",
    "lstm",
    "prophet",
    "ensemble",
    "blend",
}


def _run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLOCAST_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "slocast.cli", "run", "--synthetic-rows", "3000", "--quiet", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_run_end_to_end_then_reuse(tmp_path):
    first = _run(tmp_path, "--out", str(tmp_path / "out1"))
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((tmp_path / "out1" / "report.json").read_text())

    assert report["dataset"]["reused"] is False
    assert report["dataset"]["test_windows"] == 600 - 10
    assert set(report["models"]) == REPORT_MODELS
    for name, m in report["models"].items():
        assert set(m["nrmse"]) >= {"down", "up", "avg"}
        assert m["nrmse"]["avg"] == pytest.approx((m["nrmse"]["down"] + m["nrmse"]["up"]) / 2)
        assert set(m["mae"]) == set(m["rmse"]) == {"rnti_count", "rb_down", "rb_up", "down", "up"}
        assert set(m["coverage"]) == {"0.5", "0.9", "0.95", "0.99"} == set(m["width"])
        assert m["train_seconds"] >= 0, name
    champion = report["champion"]
    assert champion in REPORT_MODELS - {"persistence", "seasonal_naive"}
    assert (
        report["models"][champion]["nrmse"]["avg"] < report["models"]["persistence"]["nrmse"]["avg"]
    )
    assert report["timings"]["total_seconds"] > 0
    html = (tmp_path / "out1" / "report.html").read_text()
    assert "data:image/png;base64," in html and champion in html
    assert champion in first.stdout and "champion" in first.stdout
    _serves_what_the_hint_says(tmp_path, first.stdout)

    # The alias in the embedded MLflow store points at the promoted version.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("slocast-synthetic", "champion")
    assert version.tags["slocast.family"] == champion
    assert str(version.version) == report["models"][champion]["registry"]["version"]
    assert "test.nrmse_avg" in version.tags

    # Identical input and config: the processed dataset is reused, the champion is kept.
    second = _run(tmp_path, "--out", str(tmp_path / "out2"), "--models", "xgboost")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert again["dataset"]["reused"] is True
    assert again["dataset"]["id"] == report["dataset"]["id"]
    assert again["decision"]["reference"], again["decision"]
    assert any(k.startswith("champion:") for k in again["decision"]["reference"])


def _serves_what_the_hint_says(tmp_path, stdout: str) -> None:
    """The command `slocast run` prints serves the champion it just promoted, as printed."""
    hint = next(line for line in stdout.splitlines() if line.startswith("serve it: "))
    argv = shlex.split(hint.removeprefix("serve it: "))
    assert argv[:4] == ["slocast", "serve", "--task", "synthetic"], hint
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [*argv[:-2], "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "SLOCAST_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SLOCAST_TASK", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "slocast.cli", *argv[1:]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=2) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert server.poll() is None, "slocast serve exited"
                assert time.monotonic() < deadline, "slocast serve never answered /v1/model"
                time.sleep(0.5)
        assert info["task"] == "synthetic", info
    finally:
        server.terminate()
        server.wait(30)


def test_a_test_file_too_small_to_promote_on_is_refused(tmp_path):
    """One test window promoted a champion; the run now stops before training."""
    from slocast.core.synthetic import generate_lte
    from slocast.preprocess.stage import MIN_TEST_WINDOWS

    frame = generate_lte(2400, seed=3)
    frame.iloc[:1900].to_csv(tmp_path / "Cell.csv", index=False)
    frame.iloc[1900:1911].to_csv(tmp_path / "Cell_test.csv", index=False)
    test = tmp_path / "Cell_test.csv"
    run = _run(tmp_path, "--data", str(tmp_path / "Cell.csv"), "--test-data", str(test))
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"slocast: error: {test}: the test file gives 1 test window(s); at least "
        f"{MIN_TEST_WINDOWS} are needed to score the models and promote a champion: give a "
        f"test file of at least {MIN_TEST_WINDOWS + 10} rows"
    )


def test_minimum_test_windows_boundary():
    from slocast.core.config import PipelineConfig
    from slocast.core.errors import DatasetError
    from slocast.core.synthetic import generate_lte
    from slocast.preprocess.stage import MIN_TEST_WINDOWS, preprocess

    # preprocess is shared by `slocast run` and the preprocess service: both refuse.
    frame = generate_lte(2400, seed=3)
    rows = 1900 + MIN_TEST_WINDOWS + 10
    preprocess(frame.iloc[:1900], frame.iloc[1900:rows], PipelineConfig())
    with pytest.raises(DatasetError, match=f"gives {MIN_TEST_WINDOWS - 1} test window"):
        preprocess(frame.iloc[:1900], frame.iloc[1900 : rows - 1], PipelineConfig())
    # Without a test file the held-out last 20% counts the same way.
    with pytest.raises(DatasetError, match="C.csv: its last 20%, held out as test, gives 90"):
        preprocess(frame.iloc[:500], None, PipelineConfig(), sources={"train": "C.csv"})


@pytest.mark.slow
def test_run_on_files_with_gaps_scores_only_observed_rows(tmp_path):
    import numpy as np

    from slocast.core.synthetic import generate_lte

    frame = generate_lte(2400, seed=3)
    train, test = frame.iloc[:1900], frame.iloc[1900:]
    train_gaps, test_gaps = [300, 301, 302, 1000], [100, 101]
    train.drop(index=train.index[train_gaps]).to_csv(tmp_path / "Cell.csv", index=False)
    test.drop(index=test.index[test_gaps]).to_csv(tmp_path / "Cell_test.csv", index=False)
    files = ["--data", str(tmp_path / "Cell.csv"), "--test-data", str(tmp_path / "Cell_test.csv")]

    refused = _run(tmp_path, *files, "--models", "xgboost", "--out", str(tmp_path / "o0"))
    assert refused.returncode == 2
    assert "a gap of 3 missing row(s)" in refused.stderr and "--max-gap-rows" in refused.stderr

    run = _run(
        tmp_path, *files, "--models", "xgboost", "--max-gap-rows", "3", "--out", str(tmp_path / "o")
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    data = report["dataset"]
    assert report["config"]["max_gap_rows"] == 3
    assert data["train_rows"] + data["val_rows"] == 1900 and data["test_rows"] == 500
    assert data["empty_rows"] == {"train": 4, "val": 0, "test": 2}
    assert data["test_windows"] == 500 - 10
    for name, m in report["models"].items():
        values = [m["nrmse"]["avg"], *m["rmse"].values(), *m["coverage"]["0.9"].values()]
        assert np.isfinite(values).all(), name
    assert report["champion"] is not None


@pytest.mark.slow
def test_a_target_that_is_always_zero_has_no_nrmse_and_a_strict_json_report(tmp_path):
    """A cell that never used uplink resource blocks: `rb_up` is 0 in every row.
    Its NRMSE does not exist (null, not a bare NaN that strict JSON parsers
    reject), its features stay finite, and nothing divides by zero."""
    from slocast.core.synthetic import generate_lte

    frame = generate_lte(2400, seed=5)
    frame["rb_up"] = 0.0
    frame.iloc[:1900].to_csv(tmp_path / "Quiet.csv", index=False)
    frame.iloc[1900:].to_csv(tmp_path / "Quiet_test.csv", index=False)
    files = ["--data", str(tmp_path / "Quiet.csv"), "--test-data", str(tmp_path / "Quiet_test.csv")]
    run = _run(tmp_path, *files, "--models", "xgboost", "--out", str(tmp_path / "o"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RuntimeWarning" not in run.stderr, run.stderr[-3000:]

    def refuse(constant: str) -> None:
        raise AssertionError(f"report.json holds {constant}")

    report = json.loads((tmp_path / "o" / "report.json").read_text(), parse_constant=refuse)
    for name, m in report["models"].items():
        assert m["nrmse"]["rb_up"] is None, name
        assert m["rmse"]["rb_up"] is not None and m["nrmse"]["avg"] > 0, name
        assert m["coverage"]["0.9"]["rb_up"] is not None, name
    assert report["champion"] is not None
