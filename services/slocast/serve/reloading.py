"""Hot reload: every worker process follows the champion alias, without dropping requests.

Design (see docs/serving.md):

- :class:`ModelHolder` owns the served model. ``current`` is replaced by one
  attribute assignment (atomic under the GIL) after the new version was fetched,
  compiled and self-tested in a background thread. A request reads ``current``
  once and uses that object to the end, so in-flight requests finish on the old
  model and nothing is ever half-swapped.
- Cross-process notification: ``uvicorn --workers N`` runs N processes that share
  nothing but the filesystem. :func:`request_reload` bumps an integer in a
  *generation file* under the serving cache directory; every worker's
  :class:`ReloadWatcher` stats it every ~150 ms and re-checks the registry when it
  changes. ``POST /v1/reload`` calls it, and so will the model-selected event
  listener. As a safety net every worker also re-reads the alias every
  ``SLOCAST_REGISTRY_POLL_SECONDS``, and retries every 2 s while it has no model.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from slocast.adapters.registry import ModelRegistry
from slocast.serve.loading import ServedModel, build_served_model, fetch_bundle
from slocast.serve.metrics import ServeMetrics
from slocast.settings import ServeSettings

log = logging.getLogger(__name__)
RETRY_WITHOUT_MODEL_SECONDS = 2.0


@dataclass(frozen=True)
class ReloadOutcome:
    outcome: str  # "swapped", "unchanged", "no_champion" or "failed"
    version: str | None
    previous: str | None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "version": self.version,
            "previous": self.previous,
            "error": self.error,
        }


class ModelHolder:
    """The model this process serves, and the only code that replaces it."""

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._registry: ModelRegistry | None = None

    def _get_registry(self) -> ModelRegistry:
        # Created lazily and retried: an MLflow server that is down at start-up must
        # not take the server down, only delay readiness.
        if self._registry is None:
            self._registry = ModelRegistry(
                self.settings.tracking_uri,
                artifact_location=(self.settings.home / "mlruns").as_uri(),
            )
        return self._registry

    def refresh(self) -> ReloadOutcome:
        """Serve the current champion: load it if it differs from what is served."""
        with self._lock:
            previous = self.current.version if self.current else None
            try:
                registry = self._get_registry()
                ref = registry.champion(self.settings.task)
                if ref is None:
                    self.last_error = f"no champion for task {self.settings.task!r} yet"
                    return ReloadOutcome("no_champion", previous, previous, self.last_error)
                served = self.current
                if served is not None and (served.ref.version, served.ref.run_id) == (
                    ref.version,
                    ref.run_id,
                ):
                    self.metrics.reloads.labels("unchanged").inc()
                    return ReloadOutcome("unchanged", previous, previous)
                bundle_dir = fetch_bundle(registry, ref, self.settings.models_dir)
                model = build_served_model(ref, bundle_dir, self.settings)
            except Exception as exc:  # any failure keeps the old model serving
                self.metrics.load_failures.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("loading the champion failed; still serving %s", previous)
                return ReloadOutcome("failed", previous, previous, self.last_error)
            self.current = model  # the atomic swap
            self.last_error = None
            self.metrics.reloads.labels("swapped").inc()
            self.metrics.set_model(
                ref.task, ref.version, model.bundle.family, model.predictor.engine, ref.run_id
            )
            self.metrics.model_loaded_at.set(model.loaded_at)
            _freeze_heap()
            if getattr(model.predictor, "fallback", False):
                self.metrics.engine_fallbacks.inc()
            adoption = getattr(model.predictor, "adoption", None)
            if adoption is not None:
                self.metrics.compiled_rejected.inc(len(adoption.rejected))
            self.metrics.compiled_here.inc(getattr(model.predictor, "built_here", 0))
            log.info(
                "serving %s v%s (%s, engine %s), loaded in %.2fs",
                ref.task,
                ref.version,
                model.bundle.family,
                model.predictor.engine,
                model.load_seconds,
            )
            return ReloadOutcome("swapped", ref.version, previous)


def _freeze_heap() -> None:
    """Move everything alive now (imports, the served model) out of the cyclic GC's sight.

    A worker holds ~330k long-lived objects (FastAPI, MLflow, XGBoost, the model);
    every full collection walked all of them (~100 ms measured in-process) and
    stalled whichever requests were in flight, every few thousand forecasts. Frozen
    objects are still freed by reference counting when dropped (an old model after
    a swap); only reference cycles among them would now outlive the process.
    """
    gc.collect()
    gc.freeze()


def read_generation(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def request_reload(settings: ServeSettings) -> int:
    """Ask every serving process sharing ``settings.cache_dir`` to re-check the champion.

    The hook for anything that learns about a promotion (``POST /v1/reload``, the
    model-selected event listener). Returns the new generation number.
    """
    path = settings.generation_file
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two concurrent bumps must not both write n+1
        generation = read_generation(path) + 1
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(str(generation))
        os.replace(tmp, path)
    return generation


class ReloadWatcher:
    """Background thread of one worker: generation file, registry poll, retries."""

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder
        self.settings = holder.settings
        self.seen_generation = read_generation(self.settings.generation_file)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slocast-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def wake(self) -> None:
        """Re-check the champion now, in this process only."""
        self._wake.set()

    def _generation_changed(self) -> bool:
        generation = read_generation(self.settings.generation_file)
        if generation != self.seen_generation:
            self.seen_generation = generation
            return True
        return False

    def _run(self) -> None:
        poll = self.settings.registry_poll_seconds
        next_poll = 0.0  # load at once on start
        while not self._stop.is_set():
            now = time.monotonic()
            due = self._wake.is_set() or self._generation_changed() or now >= next_poll
            self._wake.clear()
            if due:
                outcome = self.holder.refresh()
                if self.holder.current is None:  # not ready yet: retry soon
                    next_poll = now + RETRY_WITHOUT_MODEL_SECONDS
                else:  # serving (a failed reload keeps the old model): normal cadence
                    next_poll = now + poll if poll > 0 else float("inf")
                log.debug("reload check: %s", outcome)
            self._wake.wait(self.settings.generation_poll_seconds)
