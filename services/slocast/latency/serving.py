"""The served model in a prediction worker, and how it follows promotions.

Each worker process holds one immutable :class:`ServedModel` behind a reference
that is swapped atomically (a single attribute assignment), so a request always
runs on one consistent model version and reloading never blocks requests.

Promotions are picked up by :class:`PointerWatcher`: a daemon thread that ``stat``s
the pointer file every ``poll_interval`` seconds (default 0.1 s: one syscall, a few
microseconds) and loads the new bundle as soon as the pointer changes. This keeps
every worker of every replica within a fraction of a second of the trainer without
any coordination between workers, inotify (not available on network volumes) or a
broker connection per worker. ``POST /reload`` bumps a ``RELOAD`` file that the same
watchers follow, which is how one HTTP request reaches every worker; the reload
itself runs on each worker's watcher thread, never on the request, and requests
that arrive before it starts are served by the same reload.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from slocast.core.compiled_trees import TreeModel, load_tree_model
from slocast.core.conformal import MondrianCalibration
from slocast.latency.bundle import (
    MODEL_TYPE,
    PUBLIC_OBJECTIVE,
    BundleError,
    Pointer,
    read_manifest,
    read_pointer,
)
from slocast.latency.features import NUM_REGIMES, build_features, regimes
from slocast.latency.model import TARGETS, point_from_raw, scale_of
from slocast.latency.native import (
    COUNT,
    ENUM,
    FRACTION,
    Field,
    FlatForest,
    Kernel,
    Parser,
    UnsupportedForest,
    load_kernel,
)
from slocast.latency.prior import PRIOR_VERSION, PriorTarget, prior_targets
from slocast.latency.schema import (
    COUNT_FIELDS,
    FRACTION_FIELDS,
    OPTIONAL_COUNT_FIELDS,
    POD_TYPES,
    UPPER_BOUNDS,
    Columns,
)

log = logging.getLogger(__name__)
RELOAD_FILE = "RELOAD"


@dataclass(frozen=True)
class ServedTarget:
    trees: TreeModel
    objective: str
    calibration: MondrianCalibration
    # The branchless kernel's copy of the same trees (None: ``trees`` serve).
    flat: FlatForest | None = None
    # calibration.offsets_for(regime) for every regime, built once.
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = self.calibration.offsets_for(np.arange(NUM_REGIMES))
        table.setflags(write=False)
        object.__setattr__(self, "_offsets", table)

    @property
    def engine(self) -> str:
        return self.flat.engine if self.flat is not None else self.trees.engine

    def predict(self, x: np.ndarray, regime_ids: np.ndarray) -> np.ndarray:
        raw = self.flat.predict(x) if self.flat is not None else self.trees.predict(x)
        point = point_from_raw(raw, self.objective)
        # model.upper_bound with the regime offsets looked up in one gather instead
        # of a mask per regime: the same operations in the same order (tested equal).
        offsets = self._offsets[regime_ids] * scale_of(point)
        return np.maximum(point + offsets, 0.0)


@dataclass(frozen=True)
class ServedModel:
    version: str
    quantile: float
    model_type: str
    objective_type: str
    loaded_at: str
    targets: dict[str, ServedTarget | PriorTarget]
    # The native kernel (None: Python paths) and its request parser.
    kernel: Kernel | None = None
    parser: Parser | None = None
    # True while the cold-start prior serves (no trained model yet).
    cold: bool = False

    def predict(self, cols: Columns) -> dict[str, np.ndarray]:
        """P-quantile upper bounds (ms) per target for validated columns."""
        x = build_features(cols)
        regime_ids = regimes(cols)
        return {name: target.predict(x, regime_ids) for name, target in self.targets.items()}

    @property
    def engines(self) -> dict[str, str]:
        return {name: t.engine for name, t in self.targets.items()}

    @property
    def objectives(self) -> dict[str, str]:
        return {name: t.objective for name, t in self.targets.items()}


def prior_model(quantile: float) -> ServedModel:
    """The cold-start prior (:mod:`slocast.latency.prior`) as a served model."""
    return ServedModel(
        version=PRIOR_VERSION,
        quantile=quantile,
        model_type=MODEL_TYPE,
        objective_type=PUBLIC_OBJECTIVE,
        loaded_at=datetime.now(UTC).isoformat(),
        targets=dict(prior_targets()),
        cold=True,
    )


def feature_parser(kernel: Kernel) -> Parser:
    """The kernel's parser for prediction requests, in ``parse_features``'s column
    order and with its rules (latency-api.md)."""
    fields = (
        [Field(n, FRACTION, True, maximum=UPPER_BOUNDS[n]) for n in FRACTION_FIELDS]
        + [Field(n, COUNT, True, maximum=UPPER_BOUNDS[n]) for n in COUNT_FIELDS]
        + [Field(n, COUNT, False, maximum=UPPER_BOUNDS[n]) for n in OPTIONAL_COUNT_FIELDS]
        + [Field("pod_type", ENUM, False, float(POD_TYPES[""]))]
    )
    return kernel.parser(fields, sorted(POD_TYPES, key=POD_TYPES.__getitem__))


def flat_forest(kernel: Kernel, trees_path: Path, trees: TreeModel) -> FlatForest | None:
    """The branchless copy of a model if it reproduces XGBoost on probe rows."""
    try:
        flat = FlatForest(kernel, trees_path)
    except (UnsupportedForest, KeyError, ValueError) as exc:
        log.warning("%s served by %s: %s", trees_path.name, trees.engine, exc)
        return None
    for missing in (0.0, 0.02):  # the kernel has a separate path for missing values
        x = flat.probe_rows(missing=missing)
        got, want = flat.predict(x), trees.predict_with("xgboost", x)
        tolerance = 1e-5 * max(1.0, float(np.max(np.abs(want))))
        if not np.allclose(got, want, rtol=1e-5, atol=tolerance):
            worst = float(np.max(np.abs(got - want)))
            log.error(
                "branchless %s disagrees with XGBoost (max |diff| %g): not used", trees_path, worst
            )
            return None
    return flat


def load_served_model(model_dir: Path, pointer: Pointer, compile_cache: Path) -> ServedModel:
    bundle, manifest = read_manifest(model_dir, pointer)
    kernel = load_kernel([bundle / "lib"], compile_cache)
    targets = {}
    for name in TARGETS:
        files = manifest["targets"][name]
        calib = json.loads((bundle / files["calibration"]).read_text())
        trees_path = bundle / files["trees"]
        # Prefer the trainer's libraries inside the bundle; compile into the local
        # cache only when they are missing or were built for another platform. A
        # bundle marked ``library_pending`` is followed within seconds by the same
        # trees compiled by the trainer: serve it with XGBoost meanwhile rather than
        # compiling in every worker.
        digest = manifest["files"][files["trees"]]
        pending = bool(manifest.get("library_pending", False))
        trees = None
        if (bundle / "lib").is_dir():
            trees = load_tree_model(
                trees_path, bundle / "lib", compile_if_missing=False, expected_sha256=digest
            )
        if trees is None or trees.engine != "tl2cgen":
            trees = load_tree_model(
                trees_path, compile_cache, compile_if_missing=not pending, expected_sha256=digest
            )
        targets[name] = ServedTarget(
            trees,
            calib["objective"],
            MondrianCalibration.from_dict(calib["mondrian"]),
            flat_forest(kernel, trees_path, trees) if kernel is not None else None,
        )
    return ServedModel(
        version=pointer.version,
        quantile=float(manifest["quantile"]),
        model_type=manifest["model_type"],
        objective_type=PUBLIC_OBJECTIVE,
        loaded_at=datetime.now(UTC).isoformat(),
        targets=targets,
        kernel=kernel,
        parser=feature_parser(kernel) if kernel is not None else None,
    )


class ModelHolder:
    """The current model of this worker: ``prior`` (or ``None`` without one) until a
    trained model is published."""

    def __init__(
        self, model_dir: Path, compile_cache: Path, prior: ServedModel | None = None
    ) -> None:
        self.model_dir = model_dir
        self.compile_cache = compile_cache
        self.current: ServedModel | None = prior
        self.load_errors = 0
        self.loads = 0  # bundles loaded (successfully) by this worker
        self._lock = threading.Lock()  # serialises loads, never taken by requests

    def refresh(self, force: bool = False) -> bool:
        """Load the pointed-to bundle if it is new (or ``force``); True if swapped."""
        with self._lock:
            try:
                pointer = read_pointer(self.model_dir)
                if pointer is None:
                    return False
                current = self.current
                if not force and self.trained and current.version == pointer.version:
                    return False
                started = time.perf_counter()
                model = load_served_model(self.model_dir, pointer, self.compile_cache)
            except (BundleError, OSError, ValueError, KeyError) as exc:
                self.load_errors += 1
                log.error(
                    "model load failed, keeping %s: %s", getattr(self.current, "version", None), exc
                )
                return False
            self.current = model  # atomic swap
            self.loads += 1
            log.info(
                "pid %d serving %s (%s) loaded in %.0f ms",
                os.getpid(),
                model.version,
                model.engines,
                1000 * (time.perf_counter() - started),
            )
            return True

    @property
    def trained(self) -> bool:
        """A trained model (not the prior) serves."""
        return self.current is not None and not self.current.cold


def request_reload(model_dir: Path) -> None:
    """Ask every worker watching ``model_dir`` to reload (bumps ``RELOAD``)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{RELOAD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(str(time.time_ns()))
    os.replace(tmp, model_dir / RELOAD_FILE)


class PointerWatcher(threading.Thread):
    """Polls the pointer and reload files with ``stat`` and refreshes the holder.

    Every load of this worker happens on this thread, one at a time, never on a
    request. Reload requests coalesce: however many arrive (``RELOAD`` bumps from
    any worker, or :meth:`request_local`) before the watcher starts a reload are
    served by that one reload; those arriving while it runs by one more."""

    def __init__(self, holder: ModelHolder, poll_interval: float) -> None:
        super().__init__(name="pointer-watcher", daemon=True)
        self.holder = holder
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._local = threading.Event()  # a reload of this worker only was requested
        # The RELOAD signature of the last reload this watcher started.
        self._reload_started = self._signature(RELOAD_FILE)

    def _signature(self, name: str) -> tuple[int, int] | None:
        try:
            st = os.stat(self.holder.model_dir / name)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def reload_pending(self) -> bool:
        """A reload was requested that this worker has not started yet."""
        return self._local.is_set() or self._signature(RELOAD_FILE) != self._reload_started

    def request_local(self) -> None:
        """Reload this worker's model soon (when ``RELOAD`` cannot be written, e.g.
        a read-only model volume); coalesces like a ``RELOAD`` bump."""
        self._local.set()
        self._wake.set()

    def run(self) -> None:
        from slocast.latency.bundle import POINTER

        seen_pointer = self._signature(POINTER)
        seen_reload = self._reload_started
        while True:
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            pointer, reload = self._signature(POINTER), self._signature(RELOAD_FILE)
            local = self._local.is_set()
            if pointer != seen_pointer or reload != seen_reload or local:
                # Remember the signature only when the load worked, so a failed load
                # (e.g. a bundle still being pruned) is retried on the next tick.
                forced = reload != seen_reload or local
                self._local.clear()
                self._reload_started = reload
                self.holder.refresh(force=forced)
                if self.holder.trained or pointer is None:
                    seen_pointer, seen_reload = pointer, reload

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
