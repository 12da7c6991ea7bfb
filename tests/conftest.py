"""Fixtures shared by every suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# As in `slocast.cli.main`: passive OpenMP waiting, set before XGBoost/torch load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def lte_dir() -> Path:
    """The real LTE data beside the checkout (`../shared/datasets/lte`)."""
    path = SHARED_DATA / "lte"
    if not (path / "PobleSec.csv").exists():
        pytest.skip(f"real LTE data not found at {path}")
    return path
