"""``slocast service evaluator``: the durable evaluator.

It keeps no state of its own. On every training event, on a timer and at start-up
it asks MLflow which families have results for a dataset and whether a decision
exists; it decides when every expected family reported (or the deadline passed),
then applies the decision in resumable steps:

1. record the decision as an MLflow run (tags hold everything the next steps need,
   ``slocast.published=false``);
2. point the ``champion`` alias at the winner (skipped if already there);
3. publish model-selected and wait for the broker's acknowledgement;
4. tag the decision ``slocast.published=true``; then the Kafka offset is committed.

A crash between any two steps is finished by the next start (the timer scans for
decisions with ``published=false``), so a promotion happens exactly once and its
event is delivered at least once (prediction workers ignore a version they serve).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from confluent_kafka import Message

from slocast.adapters.registry import TAG_DATASET, TAG_TASK, registered_name
from slocast.core.errors import DatasetError, SlocastError
from slocast.evaluate.stage import assess, promote
from slocast.models.bundle import load_bundle
from slocast.pipeline.events import (
    EventError,
    ModelSelected,
    TrainingFailed,
    TrainingStarted,
    TrainingSucceeded,
    parse_event,
)
from slocast.pipeline.kafka.runner import ServiceContext, configure_logging
from slocast.pipeline.kafka.transport import PermanentError, is_outage
from slocast.pipeline.mlflow_state import (
    TAG_DECISION_ID,
    TAG_PROMOTED,
    TAG_PUBLISHED,
    TAG_TRIGGER,
    TAG_WINNER,
    TAG_WINNER_VERSION,
    DecisionRecord,
)
from slocast.preprocess.store import has_dataset, load_dataset
from slocast.settings import FAULT_EVALUATOR_AFTER_PROMOTE, EvaluatorSettings

log = logging.getLogger(__name__)
SERVICE = "evaluator"
FAULT_EXIT_CODE = 17


class DurableEvaluator:
    def __init__(self, ctx: ServiceContext, settings: EvaluatorSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self._waiting_logged: dict[tuple[str, str], float] = {}
        # Datasets whose deadline decision failed with a non-outage error: not
        # re-scored on every tick (until a restart or a new training event).
        self._tick_failed: set[tuple[str, str]] = set()

    # --- entry points ---------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        try:
            event = parse_event(msg.value(), TrainingStarted, TrainingSucceeded, TrainingFailed)
        except EventError as exc:
            raise PermanentError(str(exc)) from exc
        if isinstance(event, TrainingStarted):
            return
        self._tick_failed.discard((event.task, event.dataset_id))
        self.consider(event.task, event.dataset_id)

    def tick(self) -> None:
        """Finish interrupted decisions; decide datasets whose deadline passed."""
        state = self.ctx.state
        store = self.ctx.store
        # Only datasets in this evaluator's store: they are the ones it can score.
        for record in state.unpublished_decisions():
            if has_dataset(store, record.tags.get(TAG_DATASET, "")):
                self.finish(record)
        window = max(3 * self.settings.deadline_seconds, 86_400.0)
        for task, dataset_id in state.datasets_with_results(window):
            if (task, dataset_id) in self._tick_failed:
                continue
            if has_dataset(store, dataset_id) and state.decision(task, dataset_id) is None:
                try:
                    self.consider(task, dataset_id)
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    # One dataset that cannot be decided must not hold up the others.
                    self._tick_failed.add((task, dataset_id))
                    log.exception(
                        "cannot decide dataset %s of task %s; skipped until a new "
                        "training event or a restart (`slocast promote` retries it)",
                        dataset_id[:12],
                        task,
                    )

    def replay(self, task: str, dataset_id: str) -> DecisionRecord | None:
        """``slocast promote``: decide now, or re-apply and re-announce an existing decision."""
        record = self.ctx.state.decision(task, dataset_id)
        if record is None:
            return self.consider(task, dataset_id, manual=True)
        if record.promoted and record.published != "superseded":
            self._apply(record, force=True)
        return record

    # --- deciding -------------------------------------------------------------------
    def consider(
        self, task: str, dataset_id: str, *, manual: bool = False
    ) -> DecisionRecord | None:
        state = self.ctx.state
        record = state.decision(task, dataset_id)
        if record is not None:
            self.finish(record)
            return record
        versions = state.dataset_versions(task, dataset_id)
        failed = state.failed_families(task, dataset_id)
        expected = self.settings.expected_families
        missing = [f for f in expected if f not in versions and f not in failed]
        trigger = "manual" if manual else "all-reported"
        if missing and not manual:
            first_ms = state.first_result_ms(task, dataset_id)
            waited = time.time() - first_ms / 1000 if first_ms else 0.0
            if waited < self.settings.deadline_seconds:
                self._log_waiting(task, dataset_id, missing, waited)
                return None
            trigger = "deadline"
        if "persistence" not in versions:
            message = f"dataset {dataset_id[:12]}: no persistence baseline yet; cannot decide"
            if manual:
                raise SlocastError(message)
            self._log_waiting(task, dataset_id, ["persistence"], 0.0)
            return None
        if not has_dataset(self.ctx.store, dataset_id):
            raise PermanentError(f"dataset {dataset_id} is not in the store")
        try:
            dataset = load_dataset(self.ctx.store, dataset_id)
        except DatasetError as exc:
            raise PermanentError(str(exc)) from exc
        registry = self.ctx.registry
        with tempfile.TemporaryDirectory(prefix="slocast-evaluate-") as scratch:
            models = {
                family: (
                    load_bundle(_bundle_root(registry.download(ref, Path(scratch) / family))),
                    ref,
                )
                for family, ref in versions.items()
            }
            result = assess(registry, dataset, task=task, models=models, scratch=Path(scratch))
        decision = result.decision
        document = {
            **decision.to_dict(),
            "trigger": trigger,
            "expected_families": list(expected),
            "evaluated": sorted(versions),
            "missing": missing,
            "failed": failed,
            "evaluations": {name: e.to_dict() for name, e in result.evaluations.items()},
        }
        if trigger == "deadline":
            document["note"] = (
                f"decided after the {self.settings.deadline_seconds:g}s deadline without "
                f"{', '.join(missing)}"
            )
        self.ctx.store.put_bytes(
            f"decisions/{task}/{dataset_id}/{decision.decision_id}.json",
            _json(document),
        )
        tags = {
            TAG_DECISION_ID: decision.decision_id,
            TAG_PROMOTED: "true" if decision.promoted else "false",
            TAG_TRIGGER: trigger,
            TAG_PUBLISHED: "false" if decision.promoted else "n/a",
            "slocast.missing": ",".join(missing),
            "slocast.reason": decision.reason[:4000],
        }
        if decision.promoted and decision.winner is not None:
            winner = result.refs[decision.winner]
            tags[TAG_WINNER] = decision.winner
            tags[TAG_WINNER_VERSION] = winner.version
            for key, value in result.evaluations[decision.winner].flat_metrics().items():
                tags[f"test.{key}"] = repr(float(value))
        record = state.record_decision(task, dataset_id, tags, document)
        self.ctx.metrics.record_decision(task, trigger, decision.promoted)
        log.info("decision %s for %s: %s", decision.decision_id, dataset_id[:12], decision.reason)
        self.finish(record)
        return record

    # --- applying -------------------------------------------------------------------
    def finish(self, record: DecisionRecord) -> None:
        if record.published == "false":
            self._apply(record, force=False)

    def _apply(self, record: DecisionRecord, *, force: bool) -> None:
        state = self.ctx.state
        registry = self.ctx.registry
        task = record.tags[TAG_TASK]
        version = record.tags[TAG_WINNER_VERSION]
        champion = registry.champion(task)
        if champion is not None and champion.version != version:
            other = state.decision_by_id(champion.tags.get(TAG_DECISION_ID, ""))
            if other is not None and other.start_ms > record.start_ms:
                log.warning("decision %s superseded by %s", record.decision_id, other.decision_id)
                state.set_published(record, "superseded")
                return
        ref = registry.version(task, version)
        if champion is None or champion.version != version:
            metrics = {
                k[len("test.") :]: float(v) for k, v in record.tags.items() if k.startswith("test.")
            }
            with tempfile.TemporaryDirectory(prefix="slocast-promote-") as scratch:
                promote(
                    registry,
                    ref,
                    test_metrics=metrics,
                    decision={"decision_id": record.decision_id},
                    scratch=Path(scratch),
                )
            log.info("champion of %s is now v%s (%s)", task, version, record.tags.get(TAG_WINNER))
            self.ctx.metrics.record_promotion(task, record.tags.get(TAG_WINNER, ref.family))
        if self.settings.fault_injection == FAULT_EVALUATOR_AFTER_PROMOTE:
            log.error("fault injection: exiting between the alias move and model-selected")
            os._exit(FAULT_EXIT_CODE)
        event = ModelSelected(
            producer=SERVICE,
            task=task,
            dataset_id=record.tags[TAG_DATASET],
            decision_id=record.decision_id,
            registered_model=registered_name(task),
            model_version=version,
            run_id=ref.run_id,
            family=record.tags.get(TAG_WINNER, ref.family),
            model_uri=ref.source,
        )
        self.ctx.producer.publish(self.ctx.settings.topics.model_selected, event, key=task)
        if record.published != "true" or force:
            state.set_published(record, "true")
        log.info("published model-selected %s v%s", task, version)

    def _log_waiting(self, task: str, dataset_id: str, missing: list[str], waited: float) -> None:
        key = (task, dataset_id)
        if time.monotonic() - self._waiting_logged.get(key, -1e9) > 60:
            log.info(
                "dataset %s waits for %s (%.0fs so far)",
                dataset_id[:12],
                ", ".join(missing),
                waited,
            )
            self._waiting_logged[key] = time.monotonic()


def _bundle_root(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    found = list(path.rglob("manifest.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: no unique manifest.json in the downloaded model")
    return found[0].parent


def _json(document: dict) -> bytes:
    import json

    return json.dumps(document, indent=2, default=str).encode()


def run(settings: EvaluatorSettings) -> int:
    configure_logging(SERVICE, settings.common.log_level)
    ctx = ServiceContext(SERVICE, settings.common).start()
    evaluator = DurableEvaluator(ctx, settings)
    ctx.consume(
        SERVICE,
        [settings.common.topics.training],
        evaluator.handle,
        on_idle=evaluator.tick,
        idle_interval_s=settings.tick_seconds,
    )
    return 0
