"""Read latency traces (JSONL, one training sample per line) into validated columns."""

from __future__ import annotations

from pathlib import Path

import orjson

from slocast.core.errors import DatasetError
from slocast.latency.schema import Columns, ValidationFailure, parse_samples


def load_trace(path: Path) -> Columns:
    """All rows of a JSONL trace, validated with the training-sample schema."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read trace {path}: {exc}") from exc
    try:
        items = [orjson.loads(line) for line in lines if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not JSON lines: {exc}") from exc
    if not items:
        raise DatasetError(f"{path} holds no samples")
    try:
        return parse_samples(items)
    except ValidationFailure as exc:
        detail = exc.errors[0]
        raise DatasetError(f"{path}: line {detail['loc'][1] + 1}: {detail['msg']}") from exc
