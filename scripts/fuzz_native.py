"""Run one native fuzz target under atheris (libFuzzer).

    python scripts/fuzz_native.py tests/native/fuzz_forest.py [libFuzzer args...]

A target module defines ``one_input(data: bytes) -> None``: it feeds arbitrary
arrays to the native module, which must either return or reject them with
ValueError/TypeError. Anything else (another exception, a sanitizer report, a
crash) is a finding. Pass a crash file as a libFuzzer argument to reproduce it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import atheris


def load_target(path: Path) -> Callable[[bytes], None]:
    spec = importlib.util.spec_from_file_location(f"fuzz_target_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import fuzz target {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.one_input


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    target = load_target(Path(sys.argv[1]))

    def one_input(data: bytes) -> None:
        # A clear rejection is the correct answer to a malformed input.
        with contextlib.suppress(ValueError, TypeError):
            target(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
