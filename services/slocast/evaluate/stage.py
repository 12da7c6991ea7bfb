"""The evaluator stage: score every model on the test split, decide, promote.

Candidates, baselines and the serving champion are all scored on the same test
windows, which no trainer used for fitting, early stopping or calibration.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slocast.adapters.registry import ModelRegistry, VersionRef
from slocast.adapters.storage import ArtifactStore
from slocast.evaluate.promotion import Decision, decide
from slocast.evaluate.scoring import Evaluation, TestForecast, forecast_test, score_forecast
from slocast.models import BASELINES
from slocast.models.bundle import MANIFEST, BundleError, ModelBundle, load_bundle
from slocast.models.compiled_bundle import COMPILED_DIR, TAG_COMPILED_INDEX, compile_bundle
from slocast.models.guard import guard_forecasters
from slocast.preprocess.dataset import ProcessedDataset

log = logging.getLogger(__name__)
CHAMPION_LABEL = "champion"


@dataclass
class EvaluationResult:
    evaluations: dict[str, Evaluation]
    refs: dict[str, VersionRef]
    decision: Decision
    champion_name: str | None
    test_times: np.ndarray
    truth: np.ndarray
    forecasts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def champion_forecast(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.champion_name and self.champion_name in self.forecasts:
            return {self.champion_name: self.forecasts[self.champion_name]}
        return {}

    def report(
        self,
        dataset: ProcessedDataset,
        *,
        train_seconds: dict[str, float],
        val_metrics: dict[str, dict[str, float]],
        failures: dict[str, str],
        timings: dict[str, float],
        reused: bool,
        task: str,
    ) -> dict:
        models = {}
        for name, evaluation in self.evaluations.items():
            entry = evaluation.to_dict()
            entry["train_seconds"] = train_seconds.get(name, 0.0)
            entry["baseline"] = name in BASELINES
            entry["validation"] = val_metrics.get(name, {})
            ref = self.refs.get(name)
            if ref is not None:
                entry["registry"] = {"version": ref.version, "run_id": ref.run_id}
            models[name] = entry
        summary = dataset.summary()
        return {
            "task": task,
            "dataset": {
                "id": dataset.dataset_id,
                "train_rows": summary["train_rows"],
                "val_rows": summary["val_rows"],
                "test_rows": summary["test_rows"],
                "test_windows": summary["test_windows"],
                "empty_rows": summary["empty_rows"],
                "reused": reused,
                "sources": summary["sources"],
            },
            "config": dataset.config.to_dict(),
            "champion": self.champion_name,
            "decision": self.decision.to_dict(),
            "models": models,
            "failures": failures,
            "timings": timings,
        }


def evaluate_run(
    registry: ModelRegistry,
    store: ArtifactStore,
    dataset: ProcessedDataset,
    *,
    task: str,
    models: dict[str, tuple[ModelBundle, VersionRef]],
    scratch: Path,
) -> EvaluationResult:
    """Score ``models`` and the current champion, apply the rule, move the alias."""
    result = assess(registry, dataset, task=task, models=models, scratch=scratch)
    decision = result.decision
    if decision.promoted and decision.winner is not None:
        promote(
            registry,
            result.refs[decision.winner],
            test_metrics=result.evaluations[decision.winner].flat_metrics(),
            decision=decision.to_dict(),
            scratch=scratch,
        )
    registry.log_decision(task, decision.to_dict())
    store.put_bytes(
        f"decisions/{task}/{dataset.dataset_id}/{decision.decision_id}.json",
        json.dumps(decision.to_dict(), indent=2).encode(),
    )
    return result


def promote(
    registry: ModelRegistry,
    ref: VersionRef,
    *,
    test_metrics: dict[str, float],
    decision: dict,
    scratch: Path,
) -> None:
    """Make ``ref`` the champion: compiled code beside the bundle first, then the alias.

    The in-process runner and the Kafka evaluator both promote through here, so
    every server finds the libraries (and the registry's hash of their index)
    before it can see the new alias.
    """
    attach_compiled(registry, ref, scratch)
    registry.promote(ref, test_metrics=test_metrics, decision=decision)


def attach_compiled(registry: ModelRegistry, ref: VersionRef, scratch: Path) -> str | None:
    """Compile the version's trees, store them beside its bundle, record the index hash.

    Idempotent (a version already tagged is left alone, e.g. when the evaluator
    re-applies a decision after a crash). A toolchain that cannot compile is not
    a reason to keep a better model out: the promotion goes ahead, logged, and
    servers compile locally or fall back to XGBoost.
    """
    if ref.family != "xgboost" or ref.tags.get(TAG_COMPILED_INDEX):
        return ref.tags.get(TAG_COMPILED_INDEX)
    bundle_dir = _bundle_root(registry.download(ref, scratch / f"compile-v{ref.version}"))
    started = time.perf_counter()
    try:
        index_sha = compile_bundle(bundle_dir, load_bundle(bundle_dir))
    except RuntimeError as exc:
        log.error("v%s is promoted without compiled trees: %s", ref.version, exc)
        return None
    if index_sha is None:
        return None
    registry.attach_files(ref, bundle_dir / COMPILED_DIR, COMPILED_DIR)
    registry.set_version_tag(ref, TAG_COMPILED_INDEX, index_sha)
    log.info(
        "compiled v%s for serving in %.1fs (index %s)",
        ref.version,
        time.perf_counter() - started,
        index_sha[:12],
    )
    return index_sha


def _bundle_root(path: Path) -> Path:
    if (path / MANIFEST).is_file():
        return path
    found = list(path.rglob(MANIFEST))
    if len(found) != 1:
        raise BundleError(f"{path}: no unique {MANIFEST} in the downloaded model")
    return found[0].parent


def assess(
    registry: ModelRegistry,
    dataset: ProcessedDataset,
    *,
    task: str,
    models: dict[str, tuple[ModelBundle, VersionRef]],
    scratch: Path,
) -> EvaluationResult:
    """Score ``models`` and the current champion and decide, without side effects.

    The Kafka evaluator applies the decision itself (durably, in steps it can
    resume after a crash); :func:`evaluate_run` applies it at once.
    """
    evaluations: dict[str, Evaluation] = {}
    forecasts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (bundle, _) in models.items():
        forecast = forecast_test(bundle, dataset)
        evaluations[name] = score_forecast(bundle.family, forecast)
        forecasts[name] = _step1(forecast)

    champion_ref = registry.champion(task)
    champion_score = None
    champion_eval: Evaluation | None = None
    if champion_ref is not None and champion_ref.run_id not in {
        ref.run_id for _, ref in models.values()
    }:
        try:
            bundle = load_bundle(registry.download(champion_ref, scratch / "champion"))
            forecast = forecast_test(bundle, dataset)
            champion_eval = score_forecast(bundle.family, forecast)
            label = f"{champion_ref.family} v{champion_ref.version}"
            champion_score = (label, champion_eval.headline)
            forecasts[CHAMPION_LABEL] = _step1(forecast)
        except (BundleError, OSError, KeyError, ValueError) as exc:
            # An unloadable champion cannot block a valid candidate; the record says why.
            log.error("current champion v%s cannot be evaluated: %s", champion_ref.version, exc)

    if "persistence" not in evaluations:
        raise RuntimeError("the persistence baseline must be evaluated before any promotion")
    # The persistence guard on validation: a family far worse than persistence there
    # is reported, flagged, and never a candidate (slocast.models.guard).
    candidates_in = [name for name in models if name not in BASELINES]
    verdicts = guard_forecasters(
        dataset, {name: models[name][0].forecaster for name in candidates_in}
    )
    for name, verdict in verdicts.items():
        evaluations[name].guard = verdict.to_dict()
    excluded = {name: v.reason for name, v in verdicts.items() if v.excluded}
    candidates = {name: e.headline for name, e in evaluations.items() if name not in BASELINES}
    decision = decide(
        task=task,
        dataset_id=dataset.dataset_id,
        candidates=candidates,
        persistence=evaluations["persistence"].headline,
        champion=champion_score,
        excluded=excluded,
    )
    refs = {name: ref for name, (_, ref) in models.items()}
    if decision.promoted and decision.winner is not None:
        champion_name = decision.winner
    else:
        champion_name = None if champion_ref is None else CHAMPION_LABEL
        if champion_eval is not None:
            evaluations[CHAMPION_LABEL] = champion_eval
    ends = dataset.ends("test")
    return EvaluationResult(
        evaluations=evaluations,
        refs=refs,
        decision=decision,
        champion_name=champion_name,
        test_times=dataset.times[ends],
        truth=dataset.truth(ends)[:, 0],
        forecasts=forecasts,
    )


def _step1(forecast: TestForecast) -> tuple[np.ndarray, np.ndarray]:
    levels = sorted(forecast.uppers)
    level = 0.9 if 0.9 in levels else levels[-1]
    return forecast.prediction[:, 0], forecast.uppers[level][:, 0]
