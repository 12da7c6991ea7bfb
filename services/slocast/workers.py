"""Run an ASGI app factory in worker processes that each own a listening socket.

uvicorn's ``workers=N`` shares one listening socket between its processes, and an
idle worker's event loop accepts every pending connection in one go. A client that
opens its keep-alive connections together (a router's connection pool, ``wrk``)
then often lands all of them on one worker while the others idle: the server runs
at the speed of one core (docs/serving.md, "Connections and workers"). Here every
worker binds its own socket to the address with ``SO_REUSEPORT``, and the kernel
spreads new connections over the workers by a hash of each connection's addresses.

This process supervises: it binds the address first, without listening (a taken
port or a bad host fails before any worker starts, and port 0 becomes one port
for all), restarts a worker that dies, stops everything when a worker fails to
start (uvicorn's exit code 3: the next one would fail the same way) or when
workers keep dying right after their start (a crash loop: exit 1, so that the
container restarts visibly instead of staying up unready), and on SIGTERM or
SIGINT stops the workers gracefully and returns 0. A worker whose supervisor is
killed outright (SIGKILL) gets SIGTERM from the kernel and stops too. Without
``SO_REUSEPORT`` (not Linux) it falls back to uvicorn's own workers.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("slocast.workers")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_GRACE_SECONDS = 30.0  # per worker, after SIGTERM, before SIGKILL
_EARLY_EXIT_SECONDS = 10.0  # a worker that dies sooner after its start never came up
_EARLY_EXITS_TO_STOP = 3  # in a row, over all workers
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run(app: str, *, host: str, port: int, workers: int, **options: Any) -> int:
    """Serve the app factory ``app`` ("module:function") on host:port with ``workers``
    processes; ``options`` are further ``uvicorn.Config`` keywords (picklable)."""
    if workers <= 1 or not _balanced_reuseport():
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)
        return 0
    try:
        reserved = _reserve(host, port)
    except OSError as exc:
        logger.error("cannot bind %s:%s: %s", host, port, exc)
        return STARTUP_FAILURE
    port = reserved.getsockname()[1]
    config = {"app": app, "factory": True, "host": host, "port": port, **options}
    return _Supervisor(config, workers).run(reserved)


def _balanced_reuseport() -> bool:
    # BSD/macOS accept SO_REUSEPORT but hand every connection to one socket.
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _reserve(host: str, port: int) -> socket.socket:
    """The address for this server's workers. A first bind without SO_REUSEPORT fails
    when any socket already holds the address, another slocast server included
    (with SO_REUSEPORT alone, a second server would silently share the port)."""
    with _socket(host, port, reuse_port=False) as probe:
        port = probe.getsockname()[1]
    return _socket(host, port)


def _socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker(config: dict[str, Any], supervisor: int) -> None:
    """One worker process: its own socket on the shared address, then uvicorn.
    uvicorn's ``create_server`` puts the socket into the listening state."""
    _die_with(supervisor)
    try:
        sock = _socket(config["host"], config["port"])
    except OSError as exc:
        logger.error(
            "worker %d cannot bind %s:%s: %s", os.getpid(), config["host"], config["port"], exc
        )
        sys.exit(STARTUP_FAILURE)
    uvicorn.Server(uvicorn.Config(**config)).run(sockets=[sock])


def _die_with(supervisor: int) -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL: no orphan keeps
    serving the port (Linux ``PR_SET_PDEATHSIG``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        logger.warning("worker %d: prctl(PR_SET_PDEATHSIG) failed", os.getpid())
    if os.getppid() != supervisor:  # it died before the request took effect
        sys.exit(0)


class _Supervisor:
    def __init__(self, config: dict[str, Any], workers: int) -> None:
        self.config = config
        self.count = workers
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.started: list[float] = []
        self.early_exits = 0
        self.stopping = False

    def run(self, reserved: socket.socket) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in _STOP_SIGNALS}
        status = 0
        try:
            for _ in range(self.count):
                self.processes.append(self._start())
                self.started.append(time.monotonic())
            logger.info(
                "serving on %s:%s with %d workers (one SO_REUSEPORT socket each)",
                self.config["host"],
                self.config["port"],
                self.count,
            )
            status = self._watch()
        finally:
            self._stop_all()
            reserved.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _start(self) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(
            target=_worker, args=(self.config, os.getpid()), daemon=False
        )
        process.start()
        return process

    def _watch(self) -> int:
        while not self.stopping:
            # A signal only sets the flag: wake up now and then to see it.
            wait([p.sentinel for p in self.processes], timeout=0.5)
            for i, process in enumerate(self.processes):
                if self.stopping or process.is_alive():
                    continue
                process.join()
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("worker %d failed to start; stopping", process.pid)
                    return STARTUP_FAILURE
                if time.monotonic() - self.started[i] < _EARLY_EXIT_SECONDS:
                    self.early_exits += 1
                    if self.early_exits >= _EARLY_EXITS_TO_STOP:
                        logger.error(
                            "%d workers in a row exited within %.0fs of starting (last: %d, "
                            "code %s); stopping",
                            self.early_exits,
                            _EARLY_EXIT_SECONDS,
                            process.pid,
                            process.exitcode,
                        )
                        return 1
                else:
                    self.early_exits = 0
                logger.warning(
                    "worker %d exited (code %s); starting another", process.pid, process.exitcode
                )
                _forget_metrics(process.pid)
                self.processes[i] = self._start()
                self.started[i] = time.monotonic()
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        for process in self.processes:
            process.join(_GRACE_SECONDS)
            if process.is_alive():
                logger.warning(
                    "worker %d did not stop in %.0fs; killing it", process.pid, _GRACE_SECONDS
                )
                process.kill()
                process.join()


def _forget_metrics(pid: int | None) -> None:
    """A dead worker's live gauges leave the merged /metrics (prometheus multiprocess mode)."""
    from slocast.serve.metrics import multiprocess_dir

    if pid is not None and multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
