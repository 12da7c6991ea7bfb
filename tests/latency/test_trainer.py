"""The streaming trainer in-process: promotion rule, bundles, ACI under drift."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from slocast.core.metrics import coverage
from slocast.latency import trainer as trainer_module
from slocast.latency.bundle import read_manifest, read_pointer
from slocast.latency.features import build_features, regimes
from slocast.latency.model import TARGET_COLUMNS
from slocast.latency.stream import InProcessStream, SampleBatch, decode_batch, encode_batch
from slocast.latency.synthetic import generate
from slocast.latency.trainer import StreamingTrainer
from slocast.settings import LatencyTrainingSettings


def make_trainer(tmp_path: Path, **overrides) -> StreamingTrainer:
    settings = LatencyTrainingSettings(
        host="127.0.0.1",
        port=0,
        model_dir=tmp_path / "models",
        admin_token=None,
        quantile=0.9,
        retrain_interval_s=1.0,
        min_new_samples=100,
        min_train_samples=200,
        window_per_regime=5000,
        monotone=False,
        queue_samples=10_000,
        kafka_bootstrap=None,
        kafka_topic="unused",
    )
    return StreamingTrainer(dataclasses.replace(settings, **overrides), InProcessStream(10_000))


def feed(
    trainer: StreamingTrainer, workload: str, n: int, seed: int, slowdown: float = 1.0
) -> None:
    trainer.ingest(SampleBatch(time.time(), generate(workload, n, seed, slowdown)))


def served_coverage(trainer: StreamingTrainer, seed: int, slowdown: float) -> dict:
    """Coverage of the trainer's serving models on fresh samples of the workload."""
    fresh = generate("extreme-contention", 4000, seed, slowdown)
    x, regime_ids = build_features(fresh), regimes(fresh)
    out = {}
    for target, model in trainer.state.serving.items():
        y = fresh[TARGET_COLUMNS[target]]
        observed = y > 0
        bound = model.predict(x[observed], regime_ids[observed])
        out[target] = float(coverage(y[observed], bound))
    return out


def test_first_model_published_and_calibrated(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 6000, seed=1)
    evaluations = trainer.retrain_once()
    assert {e.target for e in evaluations} == {"ttft", "tpot"}
    assert all(e.promoted and e.candidate_pinball < e.incumbent_pinball for e in evaluations)
    model_dir = trainer.settings.model_dir
    pointer = read_pointer(model_dir)
    assert trainer.state.serving_version == pointer.version
    _, manifest = read_manifest(model_dir, pointer)  # hashes verified
    assert set(manifest["targets"]) == {"ttft", "tpot"} and manifest["evaluation"]
    for target, cover in served_coverage(trainer, seed=2, slowdown=1.0).items():
        assert 0.86 <= cover <= 0.94, (target, cover)
    # nothing new arrived: no retrain
    assert trainer.retrain_once() == []


def test_worse_candidate_is_not_promoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 6000, seed=1)
    trainer.retrain_once()
    version = trainer.state.serving_version
    real_fit = trainer_module.fit_target_model

    def sabotaged(*args, **kwargs):
        model = real_fit(*args, **kwargs)
        calib = model.calibration
        wide = dataclasses.replace(
            calib,
            pooled=calib.pooled + 5,
            per_group={g: v + 5 for g, v in calib.per_group.items()},
        )
        return dataclasses.replace(model, calibration=wide)

    monkeypatch.setattr(trainer_module, "fit_target_model", sabotaged)
    feed(trainer, "extreme-contention", 3000, seed=3)
    evaluations = trainer.retrain_once()
    assert evaluations and not any(e.promoted for e in evaluations)
    assert trainer.state.serving_version == version


def test_aci_recalibrates_under_drift(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 6000, seed=1)
    trainer.retrain_once()
    version = trainer.state.serving_version
    before = served_coverage(trainer, seed=5, slowdown=1.4)
    # the server got 40% slower; too few samples to retrain (min_new_samples)
    trainer.settings = dataclasses.replace(trainer.settings, min_new_samples=10**6)
    for seed in range(10, 16):
        feed(trainer, "extreme-contention", 500, seed=seed, slowdown=1.4)
    shifts = trainer.recalibrate_once()
    assert shifts and all(s > 0 for s in shifts.values())
    assert trainer.recalibrations == 1
    assert trainer.state.serving_version != version
    after = served_coverage(trainer, seed=5, slowdown=1.4)
    for target in ("ttft", "tpot"):
        assert before[target] < 0.8, before
        assert abs(after[target] - 0.9) < abs(before[target] - 0.9), (before, after)


def test_flush_discards_stale_batches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    stale = SampleBatch(time.time() - 1.0, generate("sharegpt-like", 100, seed=1))
    trainer.flush(True, True, True)
    trainer.ingest(stale)
    assert trainer.samples_dropped_by_flush == 100
    assert sum(trainer.windows["ttft"].counts().values()) == 0
    assert trainer.samples_ingested == 0


def test_a_flush_landing_inside_ingest_drops_the_batch_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch checked as fresh, then overtaken by a flush before it reached the
    windows, used to land in them after the flush (in one target's window only when
    the flush fell between the two adds)."""
    trainer = make_trainer(tmp_path)
    real = trainer_module.build_features

    def features_then_flush(columns):
        out = real(columns)
        trainer.flush(True, True, True)  # an admin's /flush arrives now
        return out

    monkeypatch.setattr(trainer_module, "build_features", features_then_flush)
    feed(trainer, "sharegpt-like", 300, seed=1)
    assert {t: sum(w.counts().values()) for t, w in trainer.windows.items()} == {
        "ttft": 0,
        "tpot": 0,
    }
    assert trainer.samples_dropped_by_flush == 300 and trainer.samples_ingested == 0


def test_a_flush_while_a_bundle_is_written_discards_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a bundle takes a while on a slow volume; a flush meanwhile must not be
    followed by the pointer moving to a model of pre-flush data."""
    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 3000, seed=1)
    real = trainer_module.write_bundle

    def write_then_flush(*args, **kwargs):
        bundle = real(*args, **kwargs)
        trainer.flush(True, True, True)
        return bundle

    monkeypatch.setattr(trainer_module, "write_bundle", write_then_flush)
    trainer.retrain_once()
    assert read_pointer(trainer.settings.model_dir) is None
    assert trainer.state.serving_version is None
    assert not [p for p in (trainer.settings.model_dir / "bundles").iterdir() if p.is_dir()]


def test_a_flush_is_remembered_across_a_restart(tmp_path: Path) -> None:
    """A restarted trainer may be handed the flushed samples again (a Kafka consumer
    re-reads its topic): they stay dropped, and a published model keeps the flush its
    data came after."""
    trainer = make_trainer(tmp_path)
    before = SampleBatch(time.time() - 1.0, generate("extreme-contention", 3000, seed=1))
    flushed_at, _ = trainer.flush(True, True, True)
    restarted = make_trainer(tmp_path)
    restarted.ingest(before)
    assert restarted.samples_dropped_by_flush == 3000
    feed(restarted, "extreme-contention", 3000, seed=2)
    restarted.retrain_once()
    assert restarted.state.serving_data_since == flushed_at
    again = make_trainer(tmp_path)
    assert again.state.serving_version == restarted.state.serving_version
    assert again.state.serving_data_since == flushed_at


def test_restart_resumes_the_published_model(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 6000, seed=1)
    trainer.retrain_once()
    restarted = make_trainer(tmp_path)
    assert restarted.state.serving_version == trainer.state.serving_version
    fresh = generate("extreme-contention", 200, seed=9)
    x, regime_ids = build_features(fresh), regimes(fresh)
    for target in ("ttft", "tpot"):
        before = trainer.state.serving[target].predict(x, regime_ids)
        after = restarted.state.serving[target].predict(x, regime_ids)
        np.testing.assert_allclose(after, before, rtol=1e-6)


def test_live_coverage_counts_arriving_truth_against_the_served_bound(tmp_path: Path) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from slocast.latency.training_app import _Metrics

    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 2000, seed=1)
    # no trained model served yet: nothing to compare with
    assert trainer.live_observed == {"ttft": 0, "tpot": 0}
    trainer.retrain_once()
    fresh = generate("extreme-contention", 3000, 7, 1.0)
    x, regime_ids = build_features(fresh), regimes(fresh)
    expected = {}
    for target, model in trainer.state.serving.items():
        y = fresh[TARGET_COLUMNS[target]]
        observed = y > 0
        bound = model.predict(x[observed], regime_ids[observed])
        expected[target] = (int(observed.sum()), int(np.count_nonzero(y[observed] <= bound)))
    trainer.ingest(SampleBatch(time.time(), fresh))
    for target, (n, covered) in expected.items():
        assert trainer.live_observed[target] == n
        assert trainer.live_covered[target] == covered
        assert 0.8 < covered / n < 0.97

    metrics = _Metrics(trainer)
    metrics.refresh()
    samples = {
        (s.name, s.labels.get("target")): s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }
    for target, (n, covered) in expected.items():
        assert samples["slocast_latency_live_observed_total", target] == n
        assert samples["slocast_latency_live_covered_total", target] == covered
        assert samples["slocast_latency_aci_alpha", target] == trainer.aci_alpha(target)
        shift = trainer.aci_shift(target)  # 3000 residuals > ACI_MIN_RESIDUALS
        assert shift is not None
        assert samples["slocast_latency_aci_shift", target] == shift
    assert samples["slocast_latency_recalibrations_total", None] == 0


def test_bad_samples_are_dropped_and_counted_and_training_goes_on(tmp_path: Path) -> None:
    """Samples that bypass HTTP validation (a Kafka message from another producer)
    out of range or not finite: dropped and counted. One 1e308 in the window used
    to make every retrain fail ("Input data contains inf") until a flush."""
    trainer = make_trainer(tmp_path)
    cols = generate("extreme-contention", 6000, seed=1)
    cols["input_token_length"][::100] = 1e308
    cols["actual_ttft_ms"][1::100] = np.inf  # null on the wire: NaN when decoded
    cols["actual_tpot_ms"][2::100] = np.nan
    cols["kv_cache_percentage"][3::100] = 2.0
    cols["num_request_running"][4::100] = -1.0
    # through the stream's wire format, as a Kafka consumer receives it
    trainer.ingest(decode_batch(encode_batch(cols, time.time())))
    assert trainer.samples_dropped_invalid == 5 * 60
    assert trainer.samples_ingested == 6000 - 5 * 60
    evaluations = trainer.retrain_once()
    assert {e.target for e in evaluations} == {"ttft", "tpot"}
    assert all(e.promoted for e in evaluations)
    assert trainer.state.retrains["failed"] == 0
    # a batch of nothing but bad rows changes nothing
    trainer.ingest(SampleBatch(time.time(), {**cols, "actual_tpot_ms": np.full(6000, np.nan)}))
    assert trainer.samples_dropped_invalid == 5 * 60 + 6000


def test_ingest_loop_survives_messages_that_are_not_batches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, retrain_interval_s=3600.0)
    queue = trainer.stream._queue
    queue.put(SampleBatch(time.time(), {"kv_cache_percentage": np.zeros(3)}))  # fields missing
    queue.put(SampleBatch(time.time(), {**generate("sharegpt-like", 5, 2), "pod_type": None}))
    trainer.stream.publish(generate("sharegpt-like", 50, seed=1))
    trainer.start()
    try:
        deadline = time.monotonic() + 10
        while trainer.samples_ingested < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        trainer.stop()
    assert trainer.samples_ingested == 50
    assert trainer.batches_dropped_invalid == 2


def test_cold_trainer_replaces_the_prior_without_waiting_an_interval(tmp_path: Path) -> None:
    """The first model is fitted as soon as enough samples arrived; later retrains
    keep the interval's pace."""
    trainer = make_trainer(tmp_path, retrain_interval_s=3600.0)
    trainer.start()
    try:
        trainer.stream.publish(generate("extreme-contention", 3000, 1))
        deadline = time.monotonic() + 120
        while trainer.state.serving_version is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first = trainer.state.serving_version
        assert first is not None, "no model an interval of 3600 s could explain"
        assert read_pointer(trainer.settings.model_dir).version == first
        trainer.stream.publish(generate("extreme-contention", 3000, 2))
        deadline = time.monotonic() + 30
        while trainer.samples_ingested < 6000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trainer.samples_ingested == 6000
        time.sleep(1.0)
        assert trainer.state.serving_version == first  # warm: the interval paces retrains
    finally:
        trainer.stop()


def test_in_process_stream_is_bounded_in_samples_not_requests() -> None:
    from slocast.latency.stream import StreamFull

    def batch(n: int) -> dict[str, np.ndarray]:
        return {"actual_ttft_ms": np.ones(n), "actual_tpot_ms": np.ones(n)}

    stream = InProcessStream(max_samples=1_000)
    stream.publish(batch(600))
    with pytest.raises(StreamFull, match="600 samples waiting"):
        stream.publish(batch(401))  # refused whole: nothing split or dropped
    stream.publish(batch(400))
    with pytest.raises(StreamFull, match="1000 samples waiting"):
        stream.publish(batch(1))  # exactly full
    assert stream.poll(0.1).columns["actual_ttft_ms"].size == 600
    assert stream.poll(0.1).columns["actual_ttft_ms"].size == 400
    assert stream.poll(0.01) is None
    stream.publish(batch(1_000))  # consuming freed every sample
    assert stream.poll(0.1).columns["actual_ttft_ms"].size == 1_000
    # A body bigger than the bound still gets into an empty queue (any body the
    # API accepts can be trained on), and then holds it until consumed.
    stream.publish(batch(5_000))
    with pytest.raises(StreamFull):
        stream.publish(batch(1))


def test_version_ids_sort_in_publication_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds and nanoseconds come from one clock read (two reads straddling a
    second boundary sorted a later version first), and a clock behind the serving
    version still gives a later id: predictors and /reload compare versions as text."""
    from slocast.latency import bundle

    clock = iter([1_700_000_000_999_999_999, 1_700_000_001_000_000_001])
    monkeypatch.setattr(bundle.time, "time_ns", lambda: next(clock))
    first, second = bundle.new_version(), bundle.new_version()
    assert first == "20231114T221320-999999999" and second == "20231114T221321-000000001"
    assert bundle.version_ns(second) == 1_700_000_001_000_000_001
    monkeypatch.setattr(bundle.time, "time_ns", lambda: 1_600_000_000_000_000_000)
    behind = bundle.new_version(after=second)
    assert behind > second and bundle.version_ns(behind) == bundle.version_ns(second) + 1
    assert bundle.version_ns("prior") is None


def test_publishing_prunes_old_bundles_and_abandoned_writes(tmp_path: Path) -> None:
    """A writer killed mid-write leaves a dot-directory; it is removed once it is an
    hour old (a write in flight takes seconds), with bundles beyond the newest few."""
    import os

    from slocast.latency import bundle

    trainer = make_trainer(tmp_path)
    feed(trainer, "extreme-contention", 3000, seed=1)
    trainer.retrain_once()
    bundles = trainer.settings.model_dir / "bundles"
    abandoned, writing = bundles / ".20250101T000000-000000001-x", bundles / ".in-flight"
    for path in (abandoned, writing):
        path.mkdir()
    hours_ago = time.time() - 2 * bundle.ABANDONED_WRITE_S
    os.utime(abandoned, (hours_ago, hours_ago))
    for seed in range(2, 2 + bundle.KEEP_BUNDLES + 1):
        trainer.state.serving.clear()  # publish every fit (no comparison)
        feed(trainer, "extreme-contention", 3000, seed=seed)
        trainer.retrain_once()
    kept = sorted(p.name for p in bundles.iterdir() if not p.name.startswith("."))
    assert len(kept) == bundle.KEEP_BUNDLES and kept[-1] == trainer.state.serving_version
    assert not abandoned.exists() and writing.exists()


def test_a_promoted_model_is_calibrated_on_every_held_out_row(tmp_path: Path) -> None:
    """Offsets from the calibration and evaluation rows together (neither trained
    on); on a stationary workload its bound covers close to the quantile (measured
    0.88-0.89 TTFT, 0.91 TPOT on these rows: the band only catches a broken offset)."""
    from slocast.latency.model import calibrate, candidates

    trainer = make_trainer(tmp_path)
    feed(trainer, "sharegpt-like", 4000, seed=3)
    [ttft, tpot] = trainer.retrain_once()
    for evaluation in (ttft, tpot):
        assert evaluation.promoted
        target = evaluation.target
        served = trainer.state.serving[target]
        params = candidates(target, False)[evaluation.chosen]
        snaps = [trainer.windows[target].snapshot(s) for s in ("calibration", "evaluation")]
        x = np.concatenate([s.features for s in snaps])
        y = np.concatenate([s.targets for s in snaps])
        g = np.concatenate([s.regimes for s in snaps])
        expected = calibrate(served.point(x), y, g, 0.9, params.calibration)
        assert served.calibration == expected
        assert y.size > 2 * trainer.windows[target].counts()["calibration"]
    fresh = generate("sharegpt-like", 20_000, seed=99)
    x, regime_ids = build_features(fresh), regimes(fresh)
    for target, model in trainer.state.serving.items():
        y = fresh[TARGET_COLUMNS[target]]
        seen = y > 0
        assert 0.85 <= coverage(y[seen], model.predict(x[seen], regime_ids[seen])) <= 0.95
