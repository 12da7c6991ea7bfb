"""Build of slocast's one native extension, ``slocast._native._core``.

Project metadata lives in pyproject.toml; this file only declares the extension,
because setuptools reads ``ext_modules`` from here. Every ``.c`` file under
``services/slocast/_native/`` is compiled into the one module, warnings as errors.
``SLOCAST_NATIVE_SANITIZE=1`` builds it with AddressSanitizer and UBSan (CI's
sanitizer job; see docs/native.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

NATIVE = Path("services/slocast/_native")
SANITIZE = os.environ.get("SLOCAST_NATIVE_SANITIZE", "") == "1"

compile_args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
link_args: list[str] = []
if SANITIZE:
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
             "-fno-omit-frame-pointer", "-g", "-O1"]
    compile_args += flags
    link_args += flags

setup(
    ext_modules=[
        Extension(
            "slocast._native._core",
            sources=sorted(str(p) for p in NATIVE.glob("*.c")),
            depends=sorted(str(p) for p in NATIVE.glob("*.h")),
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
)
