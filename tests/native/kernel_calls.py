"""Argument checks shared by the LTE kernels' tests: a kernel called with a dict of
its arguments, in order, must refuse a malformed one, a read-only output and a
wrong number of arguments (ValueError/TypeError, never a crash: the sanitizer
build runs these tests too)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def assert_refused(kernel: Callable, args: dict, name: str, make: Callable[[dict], object]) -> None:
    """``kernel`` raises once argument ``name`` is replaced by ``make(args)``."""
    args[name] = make(args)
    with pytest.raises((ValueError, TypeError)):
        kernel(*args.values())


def assert_output_and_arity_checked(kernel: Callable, args: dict) -> None:
    """``kernel`` raises on a read-only ``out`` and on wrong argument counts or types."""
    args["out"].flags.writeable = False
    with pytest.raises((ValueError, TypeError)):
        kernel(*args.values())
    with pytest.raises(TypeError):
        kernel(1, 2, 3)
    with pytest.raises(TypeError):
        kernel(*[None] * len(args))
