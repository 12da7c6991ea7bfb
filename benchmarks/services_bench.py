"""Services benchmark: submit-to-serving on PobleSec, and model-selected-to-serving.

Starts real servers (moto S3, Tansu, MLflow) and every service as a subprocess on
free 127.0.0.1 ports, then measures

1. submit-to-serving: from ``slocast submit`` of PobleSec (+ its test file) until
   every prediction worker serves the version the evaluator promoted;
2. model-selected-to-serving: the ``champion`` alias is moved between two registered
   versions and a model-selected event published (as the evaluator does); time from
   the event until every worker serves the new version (target < 2 s; the reference
   systems polled every 10-30 s). Repeated ``--reloads`` times.

The data stays in ../shared; nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from slocast.devstack.stack import (
    BUCKET,
    LOCAL_S3_ENV,
    Child,
    create_bucket,
    free_port,
    http_ok,
    mlflow_command,
    mlflow_env,
    moto_command,
    tansu_command,
    tcp_open,
    wait_until,
)


def default_candidate() -> str:
    return "xgboost" if importlib.util.find_spec("slocast.models.xgboost_forecaster") else "gru"


def served_version(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=2) as response:
            return json.loads(response.read())["version"]
    except OSError:
        return None


def wait_all_serving(ports: list[int], version: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(served_version(p) == version for p in ports):
            return time.time()
        time.sleep(0.02)
    raise TimeoutError(f"workers did not serve v{version} within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--test-data", type=Path)
    parser.add_argument("--candidate", default=default_candidate(), help="candidate family")
    parser.add_argument("--workers", type=int, default=2, help="prediction worker processes")
    parser.add_argument("--reloads", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="slocast-bench-"))
    log = open(root / "bench.log", "w")  # noqa: SIM115
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLOCAST_", "MLFLOW_"))}
    os.environ.update(LOCAL_S3_ENV)
    children: list[Child] = []
    try:
        s3_port, broker, mlflow_port = free_port(), free_port(), free_port()
        s3 = f"http://127.0.0.1:{s3_port}"
        children.append(Child("s3", moto_command(s3_port), base, log))
        wait_until(lambda: tcp_open(s3_port), 30, "moto")
        create_bucket(s3, BUCKET)
        children.append(Child("broker", tansu_command(broker), base, log))
        wait_until(lambda: tcp_open(broker), 30, "tansu")
        children.append(
            Child(
                "mlflow",
                mlflow_command(
                    mlflow_port, f"sqlite:///{root / 'mlflow.db'}", f"s3://{BUCKET}/mlflow"
                ),
                {**base, **mlflow_env(s3)},
                log,
            )
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 120, "MLflow")
        task = "PobleSec"
        families = ("persistence", "seasonal_naive", args.candidate)
        env = {
            **base,
            **LOCAL_S3_ENV,
            "PYTHONUNBUFFERED": "1",
            "SLOCAST_HOME": str(root),
            "SLOCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker}",
            "SLOCAST_NAMESPACE": "bench" + uuid.uuid4().hex[:6],
            "SLOCAST_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "SLOCAST_STORE_URI": f"s3://{BUCKET}/data",
            "SLOCAST_S3_ENDPOINT_URL": s3,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "SLOCAST_EXPECTED_FAMILIES": ",".join(families),
            "SLOCAST_TASK": task,
            "SLOCAST_SERVE_CACHE": str(root / "serving"),
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith(("SLOCAST_", "MLFLOW_"))})

        def service(name: str, *cli: str) -> None:
            service_env = {**env, "SLOCAST_HEALTH_PORT": str(free_port())}
            children.append(
                Child(name, [sys.executable, "-m", "slocast.cli", *cli], service_env, log)
            )

        ports = [free_port() for _ in range(args.workers)]
        for i, port in enumerate(ports):
            service(f"serve-{i}", "serve", "--port", str(port))
        service("listener", "service", "predict", "--listener-only")
        service("preprocess", "service", "preprocess")
        for family in families:
            service(f"trainer-{family}", "service", "trainer", "--family", family)
        service("evaluator", "service", "evaluator")
        time.sleep(8)  # let services import and join their groups before the clock starts

        from slocast.adapters.registry import ModelRegistry
        from slocast.pipeline.submit import submit_dataset
        from slocast.settings import CommonSettings

        settings = CommonSettings.from_env()
        started = time.time()
        submission = submit_dataset(settings, args.data, args.test_data, task=task)
        registry = ModelRegistry(env["MLFLOW_TRACKING_URI"])
        deadline = time.monotonic() + 1800
        champion = None
        while champion is None and time.monotonic() < deadline:
            champion = registry.champion(task)
            time.sleep(0.5)
        if champion is None:
            print("no champion promoted (did the candidate beat persistence?)", file=sys.stderr)
            return 1
        served = wait_all_serving(ports, champion.version, 300)
        print(
            f"dataset {submission.dataset_id[:12]}, candidate {args.candidate}, {args.workers} workers"
        )
        print(
            f"submit-to-serving: {served - started:.1f} s (champion v{champion.version}, {champion.family})"
        )

        # model-selected -> every worker serving, alternating between two versions.
        from slocast.pipeline.events import ModelSelected
        from slocast.pipeline.kafka.transport import EventProducer

        versions = registry.client.search_model_versions(f"name = 'slocast-{task}'")
        other = next(v for v in versions if str(v.version) != champion.version)
        producer = EventProducer(settings.kafka_bootstrap)
        latencies = []
        targets = [str(other.version), champion.version] * args.reloads
        for version in targets[: args.reloads]:
            ref = registry.version(task, version)
            registry.client.set_registered_model_alias(f"slocast-{task}", "champion", version)
            event = ModelSelected(
                producer="bench",
                task=task,
                dataset_id=submission.dataset_id,
                decision_id="bench",
                registered_model=f"slocast-{task}",
                model_version=version,
                run_id=ref.run_id,
                family=ref.family,
                model_uri=ref.source,
            )
            producer.publish(settings.topics.model_selected, event, key=task)
            latencies.append(wait_all_serving(ports, version, 60) - event.produced_at)
        producer.close()
        print(
            f"model-selected-to-serving ({args.workers} workers, {len(latencies)} reloads): "
            f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s (target < 2 s)"
        )
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        log.close()
        print(f"logs: {root / 'bench.log'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
