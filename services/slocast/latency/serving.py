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

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xgboost as xgb

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
from slocast.latency.model import (
    TARGETS,
    clip_point,
    point_from_raw,
    scale_of,
    stored_point_floor,
)
from slocast.latency.native import ENGINE_NATIVE, Engine, make_engine
from slocast.latency.prior import PRIOR_VERSION, PriorTarget, prior_targets
from slocast.latency.schema import Columns

log = logging.getLogger(__name__)
RELOAD_FILE = "RELOAD"


@dataclass(frozen=True)
class ServedTarget:
    forest: Engine
    objective: str
    calibration: MondrianCalibration
    # calibration.offsets_for(regime) for every regime (see served_target).
    offsets: np.ndarray
    # The model's point floor (model.point_floor; 0 for bundles written before it).
    point_floor_ms: float

    @property
    def engine(self) -> str:
        return self.forest.name

    def predict(self, x: np.ndarray, regime_ids: np.ndarray) -> np.ndarray:
        raw = self.forest.predict(x).astype(np.float64)
        point = clip_point(point_from_raw(raw, self.objective), self.point_floor_ms)
        # model.upper_bound with the regime offsets looked up in one gather instead
        # of a mask per regime: the same operations in the same order (tested equal).
        offsets = self.offsets[regime_ids] * scale_of(point, self.calibration.fixed_scale)
        return np.maximum(point + offsets, 0.0)


def served_target(
    forest: Engine, objective: str, calibration: MondrianCalibration, point_floor_ms: float
) -> ServedTarget:
    table = calibration.offsets_for(np.arange(NUM_REGIMES))
    table.setflags(write=False)
    return ServedTarget(forest, objective, calibration, table, point_floor_ms)


@dataclass(frozen=True)
class ServedModel:
    version: str
    quantile: float
    model_type: str
    objective_type: str
    loaded_at: str
    targets: dict[str, ServedTarget | PriorTarget]
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


def load_served_model(model_dir: Path, pointer: Pointer, engine: str) -> ServedModel:
    """The bundle ``pointer`` names, every file verified, on the ``engine`` configured
    (``native`` falls back to XGBoost per target when it cannot serve the trees)."""
    bundle, manifest = read_manifest(model_dir, pointer)
    targets = {}
    for name in TARGETS:
        files = manifest["targets"][name]
        calib = json.loads((bundle / files["calibration"]).read_text())
        booster = xgb.Booster(model_file=str(bundle / files["trees"]))
        forest = make_engine(booster, engine, f"{pointer.version}/{files['trees']}")
        targets[name] = served_target(
            forest,
            calib["objective"],
            MondrianCalibration.from_dict(calib["mondrian"]),
            stored_point_floor(calib),
        )
    return ServedModel(
        version=pointer.version,
        quantile=float(manifest["quantile"]),
        model_type=manifest["model_type"],
        objective_type=PUBLIC_OBJECTIVE,
        loaded_at=datetime.now(UTC).isoformat(),
        targets=targets,
    )


class ModelHolder:
    """The current model of this worker: ``prior`` (or ``None`` without one) until a
    trained model is published."""

    def __init__(
        self, model_dir: Path, engine: str = ENGINE_NATIVE, prior: ServedModel | None = None
    ) -> None:
        self.model_dir = model_dir
        self.engine = engine  # configured; a target the native engine cannot serve falls back
        self.current: ServedModel | None = prior
        self.load_errors = 0
        self.loads = 0  # bundles loaded (successfully) by this worker
        self.registry = serving_registry(model_dir)  # see record_serving
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
                model = load_served_model(self.model_dir, pointer, self.engine)
            except (BundleError, OSError, ValueError, KeyError) as exc:
                self.load_errors += 1
                log.error(
                    "model load failed, keeping %s: %s", getattr(self.current, "version", None), exc
                )
                return False
            self.current = model  # atomic swap
            self.loads += 1
            record_serving(self.registry, model.version)
            log.info(
                "pid %d serving %s (%s) loaded in %.0f ms",
                os.getpid(),
                model.version,
                model.engines,
                1000 * (time.perf_counter() - started),
            )
            return True

    @property
    def engine_fallbacks(self) -> int:
        """Targets of the served model on XGBoost although the native engine is
        configured (it could not represent or reproduce their trees)."""
        model = self.current
        if self.engine != ENGINE_NATIVE or model is None or model.cold:
            return 0
        return sum(not engine.startswith(ENGINE_NATIVE) for engine in model.engines.values())

    @property
    def trained(self) -> bool:
        """A trained model (not the prior) serves."""
        return self.current is not None and not self.current.cold


# One file per worker, named host-pid, holding the version it serves: how a
# `/reload` answered by one worker knows when every worker of its server serves the
# newest model (upstream clients predict right after `/reload` returns).
SERVING_DIR = ".serving"


def serving_registry(model_dir: Path) -> Path:
    """Where the workers sharing ``model_dir`` note their versions: beside the models,
    or, when the model volume is read-only (as the manifests mount it), in a
    directory of the temp dir named after it (an emptyDir shared by the pod's workers)."""
    beside = model_dir / SERVING_DIR
    try:
        beside.mkdir(parents=True, exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    digest = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"slocast-serving-{digest}"


def _serving_prefix() -> str:
    return f"{socket.gethostname()}-"


def _process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc), None where unknown.

    A pid names a process only together with its start time: after a worker is
    killed (-9, OOM) its pid can be reused by any later process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def record_serving(registry: Path, version: str) -> bool:
    """Note the version this worker serves; False when nowhere is writable."""
    pid = os.getpid()
    name = f"{_serving_prefix()}{pid}"
    try:
        registry.mkdir(parents=True, exist_ok=True)
        tmp = registry / f".{name}.tmp"
        tmp.write_text(f"{version}\n{_process_start(pid) or ''}")
        os.replace(tmp, registry / name)
    except OSError:
        return False
    return True


def forget_serving(registry: Path) -> None:
    with contextlib.suppress(OSError):
        (registry / f"{_serving_prefix()}{os.getpid()}").unlink(missing_ok=True)


def workers_serving(registry: Path) -> dict[int, str]:
    """Versions served by the live workers of this host (a dead worker's file is removed).

    An entry is a dead worker's when its pid is gone, or now names a process that
    started at another time than the one the worker recorded (a reused pid)."""
    prefix, served = _serving_prefix(), {}
    try:
        entries = list(registry.iterdir())
    except OSError:
        return served
    # Where start times are known, every live worker recorded its own: an entry
    # without one is not a live worker's either.
    starts_known = _process_start(os.getpid()) is not None
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.name[len(prefix) :].isdigit():
            continue
        pid = int(entry.name[len(prefix) :])
        try:
            version, _, started = entry.read_text().partition("\n")
        except OSError:
            continue
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True  # another user's
        if alive and (started or starts_known) and started != _process_start(pid):
            alive = False
        if not alive:
            entry.unlink(missing_ok=True)
            continue
        served[pid] = version
    return served


def serves_at_least(version: str | None, target: str) -> bool:
    """A trained model at least as new as ``target`` (versions sort by publication time)."""
    return version is not None and version != PRIOR_VERSION and version >= target


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
