"""The pipeline configuration: what defines a processed dataset and its models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from slocast.core.conformal import DEFAULT_QUANTILES
from slocast.core.errors import ConfigError

# A bound on input rows made up by carrying values forward: a longer outage
# splits the series (train on one part) rather than bridging it.
MAX_GAP_ROWS = 720
# Bounds that keep a config from an event or the command line from asking for
# absurd work (a window of 1e9 rows) before any data is read.
MAX_WINDOW = 1000
MAX_HORIZON = 100
MAX_SEASON_STEPS = 100_000


@dataclass(frozen=True)
class PipelineConfig:
    """Settings that change what is learned. Its hash is part of the dataset id.

    Attributes:
        window: input rows per forecast (protocol A: 10).
        horizon: steps forecast ahead per window (protocol A scores step 1).
        val_fraction: last share of the training file used for validation,
            early stopping and conformal calibration (protocol A: 0.2).
        test_fraction: last share held out as test when no test file is given.
        quantiles: calibrated upper-bound levels.
        cap_quantile: per-column cap fitted on training rows; model inputs above
            it are clipped (truth is never clipped for evaluation).
        spacing_tolerance: allowed relative deviation of a row interval from the
            dataset's step before the file is rejected as irregular.
        max_gap_rows: longest gap in the time grid (missing rows) that is filled
            with empty cells instead of refusing the file. Default 0: every row
            must be present, as protocol A's files are.
        season_steps: season length of the seasonal-naive baseline in rows.
            Default 0: one day at the dataset's step (720 rows of 2 minutes,
            96 of 15 minutes), so the baseline means the same on every site.
        calibration_blocks: contiguous blocks of the train split that, besides
            validation, give conformal residuals from a model refitted without
            them (cross-conformal over the whole training file). Default 0:
            validation only, as protocol A prescribes; see docs/calibration.md.
        recurrent_seeds: networks per GRU/LSTM fit (a seed ensemble: each trained
            with its own seed and early-stopped on validation, their forecasts
            averaged). Cost grows linearly with it; see README "Other sites".
    """

    window: int = 10
    horizon: int = 1
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    cap_quantile: float = 0.999
    spacing_tolerance: float = 0.1
    max_gap_rows: int = 0
    season_steps: int = 0
    calibration_blocks: int = 0
    recurrent_seeds: int = 2

    def __post_init__(self) -> None:
        # Configs also arrive as event JSON (`from_dict`): check types before ranges,
        # so a 10.5-row window or a string level is a ConfigError, not a TypeError
        # deep inside preprocessing.
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if not isinstance(self.quantiles, tuple) or not self.quantiles:
            raise ConfigError(
                f"quantiles must be a non-empty list of levels, got {self.quantiles!r}"
            )
        if any(isinstance(q, bool) or not isinstance(q, int | float) for q in self.quantiles):
            raise ConfigError(f"quantiles must be numbers, got {list(self.quantiles)!r}")
        if len(set(self.quantiles)) != len(self.quantiles) or len(self.quantiles) > 16:
            raise ConfigError(f"quantiles must be at most 16 distinct levels, got {self.quantiles}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ConfigError(f"window must be in [1, {MAX_WINDOW}], got {self.window}")
        if not 1 <= self.horizon <= MAX_HORIZON:
            raise ConfigError(f"horizon must be in [1, {MAX_HORIZON}], got {self.horizon}")
        if not 0 <= self.season_steps <= MAX_SEASON_STEPS:
            raise ConfigError(
                f"season_steps must be in [0, {MAX_SEASON_STEPS}] (0: one day), "
                f"got {self.season_steps}"
            )
        if not 0.0 <= self.spacing_tolerance <= 0.5:
            raise ConfigError(
                f"spacing_tolerance must be in [0, 0.5], got {self.spacing_tolerance}"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.9:
                raise ConfigError(f"{name} must be in (0, 0.9), got {value}")
        if not all(0.0 < q < 1.0 for q in self.quantiles):
            raise ConfigError(f"quantiles must be in (0, 1), got {self.quantiles}")
        if not 0 <= self.calibration_blocks <= 10:
            raise ConfigError(
                f"calibration_blocks must be in [0, 10], got {self.calibration_blocks}"
            )
        if not 1 <= self.recurrent_seeds <= 10:
            raise ConfigError(f"recurrent_seeds must be in [1, 10], got {self.recurrent_seeds}")
        if not 0 <= self.max_gap_rows <= MAX_GAP_ROWS:
            raise ConfigError(
                f"max_gap_rows must be in [0, {MAX_GAP_ROWS}], got {self.max_gap_rows}"
            )
        if not 0.5 < self.cap_quantile <= 1.0:
            raise ConfigError(f"cap_quantile must be in (0.5, 1], got {self.cap_quantile}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["quantiles"] = list(self.quantiles)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PipelineConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a pipeline config is an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown pipeline config keys: {unknown}")
        data = dict(data)
        levels = data.get("quantiles", DEFAULT_QUANTILES)
        if not isinstance(levels, list | tuple):
            raise ConfigError(f"quantiles must be a list of levels, got {levels!r}")
        data["quantiles"] = tuple(levels)
        return cls(**data)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of this configuration."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_INT_FIELDS = (
    "window",
    "horizon",
    "max_gap_rows",
    "season_steps",
    "calibration_blocks",
    "recurrent_seeds",
)
_FLOAT_FIELDS = ("val_fraction", "test_fraction", "cap_quantile", "spacing_tolerance")
