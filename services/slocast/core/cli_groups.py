"""Command groups shared by several subpackages' ``register`` functions."""

from __future__ import annotations

import argparse


def bench_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``slocast bench`` group's sub-parsers (created by whichever task registers first)."""
    existing = subparsers.choices.get("bench")
    if existing is None:
        existing = subparsers.add_parser("bench", help="run a fixed evaluation protocol")
        existing.add_subparsers(dest="bench", metavar="TASK")
    for action in existing._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("bench parser has no sub-commands")


def add_max_gap_rows(parser: argparse.ArgumentParser) -> None:
    """``--max-gap-rows`` of the commands that read LTE files (``PipelineConfig.max_gap_rows``)."""
    from slocast.core.config import MAX_GAP_ROWS

    parser.add_argument(
        "--max-gap-rows",
        type=int,
        default=0,
        metavar="N",
        help="fill gaps of up to N missing rows in the time grid with empty cells (inputs carry "
        "the last observation forward; those rows are never scored); default 0: refuse any gap; "
        f"at most {MAX_GAP_ROWS}",
    )
