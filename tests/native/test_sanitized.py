"""The forest kernel's tests, rerun on an AddressSanitizer + UBSan build of the module.

``SLOCAST_NATIVE_SANITIZE=1 setup.py build_ext`` builds ``slocast._native._core`` with
``-fsanitize=address,undefined`` into a temporary directory; a child Python with the
ASan runtime preloaded (Python itself is not instrumented; ``PYTHONMALLOC=malloc``
lets ASan see every buffer) loads that build in place of the normal one and runs
tests/native/test_forest.py, the fuzz target on random inputs included. Shallow
forests over 8+ rows once made the AVX2 path read past the leaf table: any read
outside an array, or undefined behaviour, fails the child.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("slocast._native._core", sys.argv[1])
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)
sys.modules["slocast._native._core"] = core  # what `from slocast._native import _core` finds
import pytest
from slocast._native import _core
assert _core is core
sys.exit(pytest.main([sys.argv[2], "-q", "-p", "no:cacheprovider"]))
"""


def _runtime(name: str) -> str | None:
    path = subprocess.run(
        ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return path if path and Path(path).is_file() else None


@pytest.mark.slow
def test_forest_tests_pass_under_address_sanitizer_and_ubsan(tmp_path: Path) -> None:
    libasan = _runtime("libasan.so")
    if libasan is None or _runtime("libubsan.so") is None:
        pytest.skip("gcc without AddressSanitizer/UBSan runtimes")
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env={**os.environ, "SLOCAST_NATIVE_SANITIZE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    (library,) = (tmp_path / "lib" / "slocast" / "_native").glob("_core*.so")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(library), str(ROOT / "tests/native/test_forest.py")],
        cwd=ROOT,
        env={
            **os.environ,
            "LD_PRELOAD": libasan,
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
            "PYTHONMALLOC": "malloc",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = (child.stdout + child.stderr)[-6000:]
    assert "AddressSanitizer" not in child.stderr and "runtime error" not in child.stderr, report
    assert child.returncode == 0, report
    assert " passed" in child.stdout and "skipped" not in child.stdout, report
