"""Random byte edits of valid request bodies, for the native parsers' differential tests."""

from __future__ import annotations

import numpy as np


def mutated(seed: bytes, rng: np.random.Generator, alphabet: bytes, max_edits: int) -> bytes:
    """``seed`` after 1 to ``max_edits`` random replacements, deletions or insertions
    of bytes drawn from ``alphabet``: mostly invalid JSON, sometimes a valid variant."""
    body = bytearray(seed)
    for _ in range(rng.integers(1, max_edits + 1)):
        at = int(rng.integers(len(body)))
        op = rng.integers(3)
        if op == 0:
            body[at] = alphabet[rng.integers(len(alphabet))]
        elif op == 1:
            del body[at]
        else:
            body.insert(at, alphabet[rng.integers(len(alphabet))])
    return bytes(body)
