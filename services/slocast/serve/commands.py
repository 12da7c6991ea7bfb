"""``slocast serve``: the prediction server (also the prediction container's entry point)."""

from __future__ import annotations

import argparse
import os
import shutil


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve the champion model over HTTP",
        description="Serve the registry's champion forecaster with FastAPI/uvicorn (uvloop, "
        "httptools). Configuration comes from the environment (SLOCAST_HOME, MLFLOW_TRACKING_URI, "
        "SLOCAST_TASK, SLOCAST_ADMIN_TOKEN, ...; see docs/serving.md); flags set the listen "
        "address and worker processes.",
    )
    from slocast.settings import serve_environment

    serve.epilog = "environment:\n" + "\n".join(
        f"  {name:32} {meaning}" for name, meaning in serve_environment().items()
    )
    serve.formatter_class = argparse.RawDescriptionHelpFormatter
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes; use one per core (default 1)",
    )
    serve.add_argument("--task", help="task to serve; overrides SLOCAST_TASK (default synthetic)")
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from slocast import workers
    from slocast.core.errors import ConfigError
    from slocast.serve.metrics import MULTIPROCESS_ENV, multiprocess_dir
    from slocast.settings import ServeSettings

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.task:
        os.environ["SLOCAST_TASK"] = args.task  # workers are new processes: pass via env
    # One thread per process: workers scale across cores; BLAS/OpenMP pools would
    # only fight them for the same cores.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    settings = ServeSettings.from_env()  # fail fast on bad settings, before spawning workers
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics_dir = None
    if args.workers > 1 and multiprocess_dir() is None:
        # One /metrics for all workers; a directory per server so that two servers
        # sharing a cache never mix (or delete) each other's values.
        metrics_dir = settings.cache_dir / "metrics" / str(os.getpid())
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    try:
        return workers.run(
            "slocast.serve.app:create_app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            log_level=args.log_level,
            access_log=False,
            # Forwarded client addresses would only feed the access log, which is off.
            proxy_headers=False,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
