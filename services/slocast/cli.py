"""The ``slocast`` command line: one dispatcher, each subcommand owned by its stage.

Every subpackage that adds commands exposes ``register(subparsers)``; the handler
it sets (``func``) returns a process exit code. Heavy imports happen inside the
handlers so ``slocast --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from slocast import __version__
from slocast.core.errors import SlocastError

# Modules contributing subcommands, in help order.
COMMAND_MODULES = (
    "slocast.runtime.commands",
    "slocast.serve.commands",
    "slocast.latency.commands",
    "slocast.pipeline.commands",
    "slocast.devstack.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slocast",
        description="Forecast operational metrics and serve calibrated upper bounds.",
    )
    parser.add_argument("--version", action="version", version=f"slocast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):  # a missing dependency
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads busy-wait by default; on a shared 2-core machine that made
    # XGBoost training ~10x slower. It must be set before libgomp loads, i.e.
    # before the first XGBoost/torch import, which only happens inside handlers.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SlocastError as exc:
        print(f"slocast: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
