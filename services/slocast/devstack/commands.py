"""CLI: ``slocast up|down|status``: the whole stack on one machine (see docs/services.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up", help="start broker, S3, MLflow and every service on this machine"
    )
    up.add_argument(
        "--families",
        default="persistence,seasonal_naive,xgboost",
        help="trainer services to start (default persistence,seasonal_naive,xgboost)",
    )
    up.add_argument(
        "--storage",
        choices=("s3", "local"),
        default="local",
        help="object store: a directory under $SLOCAST_HOME/stack-data, kept across restarts "
        "(default local), or a moto S3 server (in memory: a stack that used it cannot be "
        "restarted, only started --fresh)",
    )
    up.add_argument(
        "--fresh",
        action="store_true",
        help="delete $SLOCAST_HOME/stack-data (the previous stack's MLflow store and objects) "
        "first",
    )
    up.add_argument("--predict-port", type=int, default=8000, help="prediction server port")
    up.add_argument(
        "--task",
        default="synthetic",
        help="task whose champion the stack's prediction service serves (default synthetic; "
        "`slocast submit` names a dataset's task after its file unless given --task)",
    )
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops all")
    up.set_defaults(func=_up)
    subparsers.add_parser("down", help="stop what `slocast up` started").set_defaults(func=_down)
    subparsers.add_parser(
        "status",
        help="the `slocast up` stack's services: running or not, restarts (exit 0 when all run)",
    ).set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    from slocast.adapters.registry import check_task
    from slocast.devstack.stack import stack_up

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    check_task(args.task)
    return stack_up(
        families=families,
        storage=args.storage,
        predict_port=args.predict_port,
        task=args.task,
        foreground=args.foreground,
        fresh=args.fresh,
    )


def _status(args: argparse.Namespace) -> int:
    from slocast.devstack.stack import stack_status

    return stack_status()


def _down(args: argparse.Namespace) -> int:
    from slocast.devstack.stack import stack_down

    return stack_down()
