"""The embedded runner: preprocess -> trainers -> evaluator in one process.

It calls the same stage functions the Kafka services call; only the plumbing
(local store, SQLite MLflow, direct calls instead of events) differs.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from slocast.adapters.datasets import load_lte
from slocast.adapters.registry import ModelRegistry, VersionRef
from slocast.adapters.storage import LocalStore
from slocast.core.errors import SlocastError
from slocast.core.synthetic import generate_lte
from slocast.evaluate.stage import EvaluationResult, evaluate_run
from slocast.models import BASELINES, family_class
from slocast.models.ensemble import COMBINERS
from slocast.preprocess.dataset import ProcessedDataset
from slocast.preprocess.stage import min_rows, preprocess
from slocast.preprocess.store import has_dataset, load_dataset, save_dataset
from slocast.settings import RunSettings
from slocast.train.stage import (
    NoEligibleMembers,
    TrainedModel,
    TrainingError,
    train_ensemble,
    train_family,
)
from slocast.train.tracking import log_trained_model

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    report: dict
    evaluation: EvaluationResult
    failures: dict[str, str] = field(default_factory=dict)


def load_inputs(settings: RunSettings):
    """Validated frames (train, test-or-None) and a description of where they came from."""
    config = settings.config
    if settings.data is None:
        if settings.test_data is not None:
            raise SlocastError("--test-data needs --data")
        frame = generate_lte(settings.synthetic_rows, seed=settings.seed)
        return (
            frame,
            None,
            {"train": f"synthetic(rows={settings.synthetic_rows}, seed={settings.seed})"},
        )
    train = load_lte(
        settings.data,
        min_rows=min_rows(config),
        config=config,
    )
    test = None
    if settings.test_data is not None:
        test = load_lte(
            settings.test_data,
            min_rows=config.window + config.horizon,
            config=config,
        )
    sources = {
        "train": str(settings.data),
        "test": str(settings.test_data) if settings.test_data else None,
    }
    return train, test, sources


def prepare_dataset(settings: RunSettings, store: LocalStore) -> tuple[ProcessedDataset, bool]:
    """Preprocess, or reuse the stored result for identical input and config."""
    train, test, sources = load_inputs(settings)
    dataset = preprocess(train, test, settings.config, sources=sources)
    if has_dataset(store, dataset.dataset_id):
        # The same rows under other file names: the report names this run's files.
        return replace(load_dataset(store, dataset.dataset_id), sources=sources), True
    save_dataset(store, dataset)
    return dataset, False


def run_pipeline(settings: RunSettings, *, show_progress: bool = True) -> RunResult:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    store = LocalStore(settings.artifacts_dir)
    registry = ModelRegistry(
        settings.tracking_uri, artifact_location=(settings.home / "mlruns").as_uri()
    )

    t0 = time.perf_counter()
    dataset, reused = prepare_dataset(settings, store)
    timings["preprocess_seconds"] = time.perf_counter() - t0
    summary = dataset.summary()
    empty = sum(summary["empty_rows"].values())
    _say(
        f"dataset {dataset.dataset_id[:12]} ({'reused' if reused else 'processed'}): "
        f"{summary['train_windows']} train / {summary['val_windows']} val / "
        f"{summary['test_windows']} test windows"
        + (f"; {empty} empty row(s) (gaps filled or blank lines), never scored" if empty else ""),
        show_progress,
    )

    # Ensemble and blend go last so they can weight the members this run trained.
    families = sorted(dict.fromkeys([*BASELINES, *settings.models]), key=lambda f: f in COMBINERS)
    trained: dict[str, tuple[TrainedModel, VersionRef]] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="slocast-run-") as scratch:
        for family in families:
            t0 = time.perf_counter()
            bar = tqdm(
                total=1,
                desc=f"train {family}",
                disable=not show_progress,
                file=sys.stderr,
                leave=True,
            )
            try:
                pool = family_class(family).pool if family in COMBINERS else ()
                members = {f: m for f, (m, _) in trained.items() if f in pool}
                if members:
                    model = train_ensemble(dataset, members, seed=settings.seed, family=family)
                else:
                    model = train_family(
                        dataset, family, seed=settings.seed, progress=_progress(bar)
                    )
            except NoEligibleMembers as exc:
                # Not a failure of the run: the guard already reports every member.
                bar.set_postfix_str("skipped")
                bar.close()
                _say(f"{family} skipped: {exc}", True)
                continue
            except (TrainingError, ValueError, RuntimeError) as exc:
                failures[family] = f"{type(exc).__name__}: {exc}"
                bar.set_postfix_str("FAILED")
                bar.close()
                log.error("training %s failed: %s", family, exc)
                continue
            ref = log_trained_model(
                registry,
                model,
                dataset=dataset,
                task=settings.task_name,
                role="baseline" if family in BASELINES else "candidate",
                bundle_dir=Path(scratch) / family,
            )
            bar.set_postfix_str(f"{model.val_metrics['val_nrmse_avg']:.4f} val NRMSE")
            bar.update(bar.total - bar.n)
            bar.close()
            trained[family] = (model, ref)
            timings[f"train_{family}_seconds"] = time.perf_counter() - t0

        if "persistence" in failures:
            # Every decision is relative to it: nothing can be judged without it.
            raise SlocastError(
                f"the persistence baseline failed ({failures['persistence']}), so no model "
                "can be judged against it; check the data (e.g. values too small for "
                "float32, below 1e-30)"
            )
        t0 = time.perf_counter()
        evaluation = evaluate_run(
            registry,
            store,
            dataset,
            task=settings.task_name,
            models={family: (model.bundle, ref) for family, (model, ref) in trained.items()},
            scratch=Path(scratch),
        )
        timings["evaluate_seconds"] = time.perf_counter() - t0

    timings["total_seconds"] = time.perf_counter() - started
    report = evaluation.report(
        dataset,
        train_seconds={family: model.train_seconds for family, (model, _) in trained.items()},
        val_metrics={family: model.val_metrics for family, (model, _) in trained.items()},
        failures=failures,
        timings=timings,
        reused=reused,
        task=settings.task_name,
    )
    return RunResult(report=report, evaluation=evaluation, failures=failures)


def _progress(bar: tqdm):
    def update(done: int, total: int, message: str) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.set_postfix_str(message)
        bar.refresh()

    return update


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr)
