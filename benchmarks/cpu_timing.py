"""Thread CPU time of a call, for the in-process stage benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_cpu_seconds(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Thread CPU seconds per call of ``fn``: the best of ``repeats`` runs of ``calls``
    calls (the best run is the one least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - started) / calls)
    return best
