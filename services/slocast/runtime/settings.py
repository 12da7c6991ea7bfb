"""Settings of the embedded (single-machine) runner."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slocast.core.config import PipelineConfig
from slocast.core.registry import check_task, task_from_file


def default_home() -> Path:
    """Where the embedded defaults live: ``$SLOCAST_HOME`` or ``./.slocast``."""
    return Path(os.environ.get("SLOCAST_HOME", ".slocast")).resolve()


@dataclass
class RunSettings:
    """One ``slocast run``.

    Attributes:
        data: training file (CSV/Parquet); None runs on the synthetic generator.
        test_data: separate test file; None splits the test set off ``data``.
        models: families to train (baselines are always evaluated too).
        out: directory for report.json / report.html.
        seed: seed of every stochastic model.
        task: registry task name; defaults to the data file's stem or "synthetic".
        home: embedded MLflow store and artifact directory.
        synthetic_rows: rows the synthetic generator makes when ``data`` is None.
        config: the pipeline configuration (window, horizon, quantiles...).
    """

    data: Path | None = None
    test_data: Path | None = None
    models: tuple[str, ...] = ("xgboost", "gru", "lstm", "prophet")
    out: Path = Path("out")
    seed: int = 0
    task: str | None = None
    home: Path = field(default_factory=default_home)
    synthetic_rows: int = 8000
    config: PipelineConfig = field(default_factory=PipelineConfig)

    @property
    def task_name(self) -> str:
        if self.task is not None:
            return check_task(self.task)
        return "synthetic" if self.data is None else task_from_file(self.data)

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"
