"""The streaming trainer: consume samples, keep the window, retrain, promote.

Two daemon threads per training server:

- *ingest* polls the sample stream, drops batches published before the last flush,
  builds features once and adds rows to the per-target windows;
- *retrain* wakes every ``retrain_interval_s``; for each target with at least
  ``min_new_samples`` new training rows since its last fit it fits a candidate on
  the training split and calibrates it on the calibration split. While a target
  has no model yet (the predictors serve the cold prior), ingestion wakes it as
  soon as a target is due: the prior is replaced one fit after enough samples
  arrive, not up to an interval later.

Promotion (per target): every configuration of ``model.candidates`` (the served
default, the upstream production configuration, ...; all monotone when
``SLOCAST_LATENCY_MONOTONE``) is fitted and calibrated; the one with the lowest
pinball loss on the evaluation split is the candidate, unless it beats the served
default by no more than one standard error (``model.one_se_choice``, the offline
selection's rule). Its loss at the served quantile on the
evaluation split, rows no model version was fitted or calibrated on, must beat the
serving model's on the same rows, and the first model must beat a constant
baseline (the calibration rows' quantile), which a stub or a broken fit cannot.
When a target improves, a new bundle (candidate for improved targets, the serving
model for the others) is written and published.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from slocast.core.conformal import AdaptiveConformal
from slocast.core.metrics import coverage, pinball_loss
from slocast.latency.bundle import (
    MODEL_TYPE,
    PUBLIC_OBJECTIVE,
    BundleError,
    publish,
    read_manifest,
    read_pointer,
    write_bundle,
)
from slocast.latency.features import FEATURE_NAMES, build_features, regimes
from slocast.latency.model import (
    TARGET_COLUMNS,
    TARGETS,
    TargetModel,
    candidates,
    fit_booster,
    fit_target_model,
    load_target_model,
    one_se_choice,
    scale_of,
)
from slocast.latency.schema import SAMPLE_FIELDS, Columns, valid_sample_rows
from slocast.latency.stream import SampleBatch, SampleStream
from slocast.latency.window import Snapshot, TargetWindow
from slocast.settings import LatencyTrainingSettings

log = logging.getLogger(__name__)

# Every 10th observed sample calibrates, every 7th evaluates (coprime: the splits
# interleave evenly); the rest (~76%) train.
CALIBRATION_EVERY = 10
EVALUATION_EVERY = 7
MIN_HELD_OUT = 30
# Adaptive conformal inference on the serving model's observed misses: step size,
# residual window, residuals needed before acting, and the shift of the normalised
# offset (a fraction of the point prediction) that triggers a recalibrated bundle.
ACI_GAMMA = 0.005
ACI_WINDOW = 2000
ACI_MIN_RESIDUALS = 500
ACI_TOLERANCE = 0.02
SAMPLE_COLUMNS = (*SAMPLE_FIELDS, "pod_type")
MODEL_INFO = {
    "model_type": MODEL_TYPE,
    "objective_type": PUBLIC_OBJECTIVE,
    "features": list(FEATURE_NAMES),
}


@dataclass
class Evaluation:
    target: str
    rows: int
    candidate_pinball: float
    incumbent_pinball: float
    candidate_coverage: float
    promoted: bool
    # the chosen configuration (index in model.candidates(target, ...), and its
    # TreeParams.label) and every candidate's pinball loss on the evaluation rows
    chosen: int = 0
    chosen_config: str = ""
    candidate_pinballs: tuple[float, ...] = ()


@dataclass
class TrainerState:
    """What the HTTP layer reports; replaced wholesale under the trainer's lock."""

    serving: dict[str, TargetModel] = field(default_factory=dict)
    serving_version: str | None = None
    serving_data_since: float | None = None  # the flush that preceded its data
    last_retrain: str | None = None
    last_evaluations: dict[str, Evaluation] = field(default_factory=dict)
    retrains: dict[str, int] = field(
        default_factory=lambda: {"promoted": 0, "rejected": 0, "failed": 0}
    )


FLUSH_FILE = "FLUSHED_AT"


def read_flush_time(model_dir: Path) -> float:
    """The time of the last full flush recorded in ``model_dir`` (0: none)."""
    try:
        return float(json.loads((model_dir / FLUSH_FILE).read_text())["flushed_at"])
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Unreadable: start without one rather than refuse to train (logged).
        log.error("ignoring unreadable %s: %s", model_dir / FLUSH_FILE, exc)
        return 0.0


def write_flush_time(model_dir: Path, flushed_at: float) -> None:
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".{FLUSH_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"flushed_at": flushed_at}))
        os.replace(tmp, model_dir / FLUSH_FILE)
    except OSError as exc:
        # The flush still holds in this process; only a restart would forget it.
        log.error("cannot record the flush in %s: %s", model_dir / FLUSH_FILE, exc)


def joined(*snapshots: Snapshot) -> Snapshot:
    """The rows of every snapshot as one."""
    return Snapshot(
        np.concatenate([snap.features for snap in snapshots]),
        np.concatenate([snap.targets for snap in snapshots]),
        np.concatenate([snap.regimes for snap in snapshots]),
    )


class StreamingTrainer:
    def __init__(self, settings: LatencyTrainingSettings, stream: SampleStream) -> None:
        self.settings = settings
        self.stream = stream
        self.windows = {
            t: TargetWindow(
                len(FEATURE_NAMES), settings.window_per_regime, CALIBRATION_EVERY, EVALUATION_EVERY
            )
            for t in TARGETS
        }
        self.state = TrainerState()
        self.samples_ingested = 0
        self.samples_dropped_by_flush = 0
        # Live coverage of the served bound against arriving truth, per target:
        # samples with an observed value seen while a trained model served, and
        # those at or under its bound (monotonic; read by /metrics).
        self.live_observed = dict.fromkeys(TARGETS, 0)
        self.live_covered = dict.fromkeys(TARGETS, 0)
        self.recalibrations = 0  # bundles published with ACI-shifted offsets
        # Samples that reached the trainer out of range or non-finite (HTTP validates,
        # but anything can arrive on a Kafka topic): dropped, never trained on.
        self.samples_dropped_invalid = 0
        self.batches_dropped_invalid = 0
        # Batches published before the last full flush are dropped. Kept in the model
        # directory: a restarted trainer may be handed them again (a Kafka consumer
        # re-reads the topic from its start).
        self._flushed_at = read_flush_time(settings.model_dir)
        self._aci = {
            t: AdaptiveConformal(settings.quantile, ACI_GAMMA, ACI_WINDOW) for t in TARGETS
        }
        self._lock = threading.Lock()  # guards state and flush time
        self._window_lock = threading.Lock()  # a batch enters all windows at once
        # The flush epoch each serving target's data came after.
        self._data_epochs: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by ingest while cold, and by stop
        self._threads = [
            threading.Thread(target=self._ingest_loop, name="ingest", daemon=True),
            threading.Thread(target=self._retrain_loop, name="retrain", daemon=True),
        ]
        self.retrain_seconds: list[float] = []  # bounded below; read by /metrics
        self._resume()

    def _resume(self) -> None:
        """Adopt the published model after a restart, so the next candidate must
        beat what the predictors actually serve (not a constant)."""
        try:
            pointer = read_pointer(self.settings.model_dir)
            if pointer is None:
                return
            bundle, manifest = read_manifest(self.settings.model_dir, pointer)
            serving = {t: load_target_model(bundle, t, manifest["targets"][t]) for t in TARGETS}
        except (BundleError, OSError, ValueError, KeyError) as exc:
            # Start anyway: the first promoted model will replace the broken bundle.
            log.error("cannot resume from the published model: %s", exc)
            return
        self.state.serving = serving
        self.state.serving_version = pointer.version
        # The flush its data came after (bundles written before this was recorded: none).
        since = float(manifest.get("data_since", 0.0))
        self._data_epochs = {t: since for t in TARGETS}
        self.state.serving_data_since = since
        log.info("resumed from published model %s", pointer.version)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.stream.close()

    # --- ingestion ---------------------------------------------------------------

    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.stream.poll(0.1)
                if batch is not None:
                    self.ingest(batch)
            except Exception:  # one bad message must not stop ingestion
                log.exception("ingesting a sample batch failed; batch dropped")
                self.batches_dropped_invalid += 1

    def ingest(self, batch: SampleBatch) -> None:
        """Add one consumed batch to the windows (unless a later flush dropped it).

        Rows that break the schema (non-finite or out-of-range numbers, unknown pod
        types) are dropped and counted; a batch that is not a batch at all is
        dropped whole. One such row in the window would make every retrain fail."""
        with self._lock:
            stale = batch.published_at < self._flushed_at
        try:
            keep = valid_sample_rows(batch.columns)
        except ValueError as exc:
            log.error("dropping a malformed sample batch: %s", exc)
            self.batches_dropped_invalid += 1
            return
        rows = int(keep.shape[0])
        if stale:
            self.samples_dropped_by_flush += rows
            return
        columns = batch.columns
        if not keep.all():
            bad = rows - int(keep.sum())
            self.samples_dropped_invalid += bad
            log.warning("dropped %d of %d samples: out of range or not finite", bad, rows)
            columns = {name: np.asarray(columns[name])[keep] for name in SAMPLE_COLUMNS}
            rows -= bad
            if not rows:
                return
        features = build_features(columns)
        regime_ids = regimes(columns)
        with self._window_lock:
            # A flush may have run since the check above; it clears the windows under
            # this lock, so checking again here means a batch is either wholly in
            # the windows before the flush cleared them or dropped.
            with self._lock:
                stale = batch.published_at < self._flushed_at
            if stale:
                self.samples_dropped_by_flush += rows
                return
            self._track_misses(features, columns, regime_ids)
            for target in TARGETS:
                self.windows[target].add(features, columns[TARGET_COLUMNS[target]], regime_ids)
            cold_and_due = any(
                target not in self.state.serving and self._due(target) for target in TARGETS
            )
        self.samples_ingested += rows
        if cold_and_due:
            self._wake.set()

    def _track_misses(self, features: np.ndarray, columns: Columns, regime_ids: np.ndarray) -> None:
        """Feed the serving model's residuals beyond its bound to ACI, per target.

        The tracked value is the normalised residual minus the regime's offset: > 0
        means the actual exceeded the served bound. ACI finds the shift of all
        offsets that restores the target coverage on the newest observations.
        """
        for target, model in self.state.serving.items():
            y = columns[TARGET_COLUMNS[target]]
            observed = y > 0
            if not observed.any():
                continue
            point = model.point(features[observed])
            scale = scale_of(point, model.calibration.fixed_scale)
            excess = (y[observed] - point) / scale - model.calibration.offsets_for(
                regime_ids[observed]
            )
            self._aci[target].update(excess)
            self.live_observed[target] += int(excess.shape[0])
            self.live_covered[target] += int(np.count_nonzero(excess <= 0))

    def aci_shift(self, target: str) -> float | None:
        """Current ACI shift of ``target``'s offsets (None: not enough residuals)."""
        with self._window_lock:  # ingest updates the window under it
            aci = self._aci[target]
            return aci.offset if len(aci) >= ACI_MIN_RESIDUALS else None

    def aci_alpha(self, target: str) -> float:
        """ACI's running miscoverage level for ``target`` (1 - quantile when on target)."""
        return self._aci[target].alpha

    def flush(
        self, training: bool, test: bool, metrics: bool
    ) -> tuple[float, dict[str, dict[str, int]]]:
        """Drop window contents; returns the flush time and rows dropped per split."""
        splits = (("train",) if training else ()) + (("calibration", "evaluation") if test else ())
        # The window lock first (as ingest takes them): no batch is half added.
        with self._window_lock, self._lock:
            now = time.time()
            if training and test:
                # Batches published before now are dropped when consumed, and
                # retrains that started before now are discarded.
                self._flushed_at = now
                write_flush_time(self.settings.model_dir, now)
                self._reset_aci(TARGETS)
            if metrics:
                self.state.last_evaluations = {}
            return now, {t: self.windows[t].clear(splits) for t in TARGETS}

    # --- retraining --------------------------------------------------------------

    def _retrain_loop(self) -> None:
        while True:
            self._wake.wait(self.settings.retrain_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.retrain_once()
            except Exception:  # keep the loop alive, but loudly and counted
                log.exception("retrain failed")
                with self._lock:
                    self.state.retrains["failed"] += 1

    def _due(self, target: str) -> bool:
        window = self.windows[target]
        counts = window.counts()
        return (
            window.added_since_snapshot >= self.settings.min_new_samples
            and counts["train"] >= self.settings.min_train_samples
            and counts["calibration"] >= MIN_HELD_OUT
            and counts["evaluation"] >= MIN_HELD_OUT
        )

    def _publish(self, serving: dict[str, TargetModel], info: dict, flush_epoch: float) -> bool:
        """Write the bundle and point the predictors at it (no compilation: workers
        build the native engine's tables from the trees at load).

        ``flush_epoch``: the flush time the work started under. A flush since then
        (writing a bundle takes a while on a slow volume) discards the bundle: the
        pointer moves under the same lock a flush takes, so a model is either
        published before a flush returns or not at all. False when discarded."""
        model_dir = self.settings.model_dir
        # The bundle is as fresh as its oldest target's data.
        data_epoch = min(self._data_epochs[t] for t in TARGETS)
        bundle = write_bundle(model_dir, serving, {**info, "data_since": data_epoch})
        with self._lock:
            if self._flushed_at != flush_epoch:
                log.info("discarding bundle %s: a flush ran while it was written", bundle.name)
                shutil.rmtree(bundle, ignore_errors=True)
                return False
            pointer = publish(model_dir, bundle)
            self.state.serving_version = pointer.version
            self.state.serving_data_since = data_epoch
        return True

    def _reset_aci(self, targets) -> None:
        for target in targets:
            self._aci[target] = AdaptiveConformal(self.settings.quantile, ACI_GAMMA, ACI_WINDOW)

    def _recalibrated(self) -> dict[str, TargetModel]:
        """Serving models whose offsets ACI says have drifted, with shifted offsets."""
        shifted = {}
        for target, model in self.state.serving.items():
            shift = self.aci_shift(target)
            if shift is None or abs(shift) <= ACI_TOLERANCE:
                continue
            calib = model.calibration
            shifted[target] = replace(
                model,
                calibration=replace(
                    calib,
                    pooled=calib.pooled + shift,
                    per_group={g: v + shift for g, v in calib.per_group.items()},
                ),
            )
        return shifted

    def recalibrate_once(self) -> dict[str, float]:
        """Publish the serving trees with ACI-shifted offsets when coverage drifted."""
        with self._lock:
            data_epoch = self._flushed_at
        shifted = self._recalibrated()
        if not shifted or not all(t in self.state.serving for t in TARGETS):
            return {}
        shifts = {t: self.aci_shift(t) for t in shifted}
        with self._lock:
            if self._flushed_at != data_epoch:
                return {}
            self.state.serving = {**self.state.serving, **shifted}
            self._reset_aci(shifted)
        info = {
            **MODEL_INFO,
            "quantile": self.settings.quantile,
            "created_at": datetime.now(UTC).isoformat(),
            "aci_shift": shifts,
        }
        if not self._publish(self.state.serving, info, data_epoch):
            return {}
        self.recalibrations += 1
        log.info("recalibrated by ACI: %s", shifts)
        return shifts

    def retrain_once(self) -> list[Evaluation]:
        """Fit, evaluate and maybe promote every due target; returns the evaluations."""
        # Snapshot every due target at once, between two ingested batches, so a
        # batch is never half in one target's fit and missing from the other's.
        with self._window_lock:
            with self._lock:
                data_epoch = self._flushed_at  # the flush the snapshots' data came after
            due = [t for t in TARGETS if self._due(t)]
            snapshots = {
                t: (
                    self.windows[t].snapshot("train", reset_new=True),
                    self.windows[t].snapshot("calibration"),
                    self.windows[t].snapshot("evaluation"),
                )
                for t in due
            }
        if not due:
            self.recalibrate_once()
            return []
        started = time.perf_counter()
        q = self.settings.quantile
        evaluations, winners = [], {}
        for target, (train, calib, held) in snapshots.items():
            seed = int(time.time()) % 2**31
            # Every configuration (the upstream one included) is fitted on the
            # training split and calibrated on the calibration split; the one with
            # the lowest pinball loss on the evaluation split is the candidate
            # (one-SE rule against the served default, as offline).
            fitted, losses, row_losses, trees = [], [], [], {}
            configs = candidates(target, self.settings.monotone)
            for params in configs:
                if params.trees() not in trees:
                    trees[params.trees()] = fit_booster(
                        train.features, train.targets, q, params, seed
                    )
                model = fit_target_model(
                    target,
                    train.features,
                    train.targets,
                    calib.features,
                    calib.targets,
                    calib.regimes,
                    q,
                    params,
                    seed=seed,
                    booster=trees[params.trees()],
                )
                upper = model.predict(held.features, held.regimes)
                fitted.append((model, upper))
                residual = held.targets - upper
                row_losses.append(np.maximum(q * residual, (q - 1) * residual))
                losses.append(float(row_losses[-1].mean()))
            chosen = one_se_choice(row_losses)
            candidate, cand_upper = fitted[chosen]
            cand_loss = losses[chosen]
            incumbent = self.state.serving.get(target)
            if incumbent is not None:
                inc_loss = float(
                    pinball_loss(held.targets, incumbent.predict(held.features, held.regimes), q)
                )
            else:  # the first model must beat a constant: the calibration quantile
                constant = np.quantile(calib.targets, q)
                inc_loss = float(
                    pinball_loss(held.targets, np.full_like(held.targets, constant), q)
                )
            promoted = cand_loss < inc_loss
            evaluations.append(
                Evaluation(
                    target,
                    int(held.targets.shape[0]),
                    cand_loss,
                    inc_loss,
                    float(coverage(held.targets, cand_upper)),
                    promoted,
                    chosen,
                    configs[chosen].label,
                    tuple(losses),
                )
            )
            if promoted:
                # Chosen and compared on the evaluation rows, it is served with offsets
                # from those rows as well as the calibration rows: neither were trained
                # on, and the order statistics of ~2.4x the rows vary less (docs/latency.md,
                # "Offsets of a promoted model").
                held_out = joined(calib, held)
                winners[target] = fit_target_model(
                    target,
                    train.features,
                    train.targets,
                    held_out.features,
                    held_out.targets,
                    held_out.regimes,
                    q,
                    configs[chosen],
                    seed=seed,
                    booster=candidate.booster,
                )
        serving = {**self.state.serving, **winners}
        with self._lock:
            if self._flushed_at != data_epoch:
                # The data these fits saw was flushed meanwhile: never serve them.
                log.info("discarding a retrain that raced a flush")
                return []
            # A target model waiting for its partner is kept but not yet published.
            self.state.serving = serving
            self._reset_aci(winners)
            self._data_epochs.update({t: data_epoch for t in winners})
            self.state.last_retrain = datetime.now(UTC).isoformat()
            for e in evaluations:
                self.state.last_evaluations[e.target] = e
                self.state.retrains["promoted" if e.promoted else "rejected"] += 1
        if winners and all(t in serving for t in TARGETS):
            info = {
                **MODEL_INFO,
                "quantile": q,
                "created_at": datetime.now(UTC).isoformat(),
                "evaluation": {e.target: e.__dict__ for e in evaluations},
            }
            self._publish(serving, info, data_epoch)
        elapsed = time.perf_counter() - started
        with self._lock:
            self.retrain_seconds = [*self.retrain_seconds[-99:], elapsed]
        log.info(
            "retrain -> %s in %.1fs: %s",
            self.state.serving_version,
            elapsed,
            {
                e.target: (round(e.candidate_pinball, 3), round(e.incumbent_pinball, 3), e.promoted)
                for e in evaluations
            },
        )
        return evaluations
