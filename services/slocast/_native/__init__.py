"""slocast's one native extension module, built by the package build (setup.py).

Arrays in, arrays out; every function has a NumPy reference it is tested equal to
(tests/native). See docs/native.md.
"""

from slocast._native import _core

__all__ = ["_core"]
