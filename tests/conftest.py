"""Fixtures shared by every suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# As in `slocast.cli.main`: passive OpenMP waiting, set before XGBoost/torch load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"
# Suites whose session fixtures start servers or train a pipeline. `make test` runs
# `pytest -n 2` (the CI machine's two cores; most suites wait on servers and
# subprocesses part of the time): each of these runs whole on one worker, so its
# fixtures are built once; every other test file is its own unit of work.
SERVER_SUITES = frozenset(("integration", "k8s", "latency", "serve"))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    # xdist's own --dist loadgroup marks do not take effect under pytest 9 (the
    # group rides on a node id suffix): group by scope instead.
    from xdist.scheduler import LoadScopeScheduling

    class SuiteScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            parts = path.split("/")
            if len(parts) > 2 and parts[0] == "tests" and parts[1] in SERVER_SUITES:
                return parts[1]
            return path

    return SuiteScheduling(config, log)


@pytest.fixture(scope="session")
def lte_dir() -> Path:
    """The real LTE data beside the checkout (`../shared/datasets/lte`)."""
    path = SHARED_DATA / "lte"
    if not (path / "PobleSec.csv").exists():
        pytest.skip(f"real LTE data not found at {path}")
    return path
