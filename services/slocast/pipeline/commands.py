"""CLI: ``slocast service ...``, ``slocast submit``, ``slocast promote``."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from slocast.core.cli_groups import add_max_gap_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    service = subparsers.add_parser(
        "service",
        help="run one pipeline stage as a Kafka service",
        description="Run a stage as a long-running service configured from the environment "
        "(see docs/services.md for every variable).",
    )
    kinds = service.add_subparsers(dest="service", metavar="SERVICE", required=True)
    kinds.add_parser("preprocess", help="dataset-submitted -> dataset-ready").set_defaults(
        func=_preprocess
    )
    trainer = kinds.add_parser("trainer", help="dataset-ready -> one family's training events")
    trainer.add_argument("--family", help="model family (default: $SLOCAST_TRAINER_FAMILY)")
    trainer.set_defaults(func=_trainer)
    kinds.add_parser(
        "evaluator", help="training events -> decision, champion alias, model-selected"
    ).set_defaults(func=_evaluator)
    predict = kinds.add_parser("predict", help="prediction server plus its model-selected listener")
    predict.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    predict.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    predict.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    predict.add_argument(
        "--listener-only",
        action="store_true",
        help="run only the listener (a sidecar sharing SLOCAST_SERVE_CACHE with `slocast serve`)",
    )
    predict.add_argument(
        "--server-url",
        help="with --listener-only: the prediction server (e.g. http://127.0.0.1:8000) whose "
        "/readyz (a model is loaded) the listener's /readyz includes",
    )
    predict.set_defaults(func=_predict)
    if importlib.util.find_spec("slocast.latency.commands") is not None:
        latency = kinds.add_parser("latency-trainer", help="the latency training server")
        latency.set_defaults(func=_latency_trainer)

    submit = subparsers.add_parser(
        "submit",
        help="upload a dataset and publish dataset-submitted",
        description="Upload a dataset to the object store ($SLOCAST_STORE_URI) under its SHA-256 "
        "and publish a dataset-submitted claim check; the preprocess service takes it from there.",
    )
    submit.add_argument("--data", type=Path, required=True, help="training file (CSV or Parquet)")
    submit.add_argument("--test-data", type=Path, help="separate test file")
    submit.add_argument("--task", help="registry task (default: the data file's stem)")
    submit.add_argument("--window", type=int, default=10, help="input rows per forecast")
    submit.add_argument("--horizon", type=int, default=1, help="steps forecast ahead")
    add_max_gap_rows(submit)
    submit.set_defaults(func=_submit)

    promote = subparsers.add_parser(
        "promote",
        help="decide (or re-apply and re-announce) the promotion for a dataset by hand",
    )
    promote.add_argument("--dataset", required=True, help="dataset id (SHA-256)")
    promote.add_argument("--task", help="task (default: the only task with runs on the dataset)")
    promote.set_defaults(func=_promote)


def _preprocess(args: argparse.Namespace) -> int:
    from slocast.pipeline import preprocessor
    from slocast.settings import CommonSettings

    return preprocessor.run(CommonSettings.from_env())


def _trainer(args: argparse.Namespace) -> int:
    from slocast.pipeline import trainer
    from slocast.settings import TrainerSettings

    return trainer.run(TrainerSettings.from_env(family=args.family))


def _evaluator(args: argparse.Namespace) -> int:
    from slocast.pipeline import evaluator
    from slocast.settings import EvaluatorSettings

    return evaluator.run(EvaluatorSettings.from_env())


def _predict(args: argparse.Namespace) -> int:
    from slocast.pipeline import prediction_listener
    from slocast.settings import ListenerSettings

    settings = ListenerSettings.from_env()
    if args.listener_only:
        return prediction_listener.run_listener(settings, args.server_url)
    return prediction_listener.run(settings, args.host, args.port, args.workers)


def _latency_trainer(args: argparse.Namespace) -> int:
    from slocast.cli import main

    # The latency workload owns its training server (`slocast latency-trainer`).
    return main(["latency-trainer"])


def _submit(args: argparse.Namespace) -> int:
    from slocast.pipeline.submit import submit_dataset
    from slocast.settings import CommonSettings

    result = submit_dataset(
        CommonSettings.from_env(),
        args.data,
        args.test_data,
        task=args.task,
        window=args.window,
        horizon=args.horizon,
        max_gap_rows=args.max_gap_rows,
    )
    print(f"submitted {args.data} as task {result.task}")
    print(f"dataset id {result.dataset_id}")
    print(f"train {result.event.train_uri}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from slocast.pipeline.submit import promote_by_hand

    record = promote_by_hand(args.dataset, args.task)
    if record is None:
        print("no decision taken (see the log)")
        return 1
    print(f"decision {record.decision_id}: {record.tags.get('slocast.reason', '')}")
    print(f"published: {record.published}")
    return 0
