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
