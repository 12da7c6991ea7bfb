"""Pydantic models that document the API in OpenAPI.

They describe exactly what :mod:`slocast.serve.validation` accepts and what
:mod:`slocast.serve.forecasting` returns, but the request path does not run them:
parsing 11 columns x N rows through pydantic costs more than the model itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slocast.core.schema import FEATURE_COLUMNS, TARGET_COLUMNS

_EXAMPLE_ROW = {
    "time": "2018-02-05T23:40:00",
    "down": 109934672.0,
    "up": 1166592.0,
    "rnti_count": 6490,
    "mcs_down": 15.22,
    "mcs_down_var": 88.73,
    "mcs_up": 16.21,
    "mcs_up_var": 59.66,
    "rb_down": 0.019,
    "rb_down_var": 4.56e-08,
    "rb_up": 0.00037,
    "rb_up_var": 2.18e-08,
}


class HistoryRow(BaseModel):
    """One observed row: a timestamp and the 11 LTE columns (all required, finite numbers)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": _EXAMPLE_ROW})

    time: str = Field(
        description="ISO-8601 timestamp; naive = UTC, offsets are converted to UTC. Rows oldest "
        "first, one model step apart (2 minutes for the LTE data)."
    )
    down: float
    up: float
    rnti_count: float
    mcs_down: float
    mcs_down_var: float
    mcs_up: float
    mcs_up_var: float
    rb_down: float
    rb_down_var: float
    rb_up: float
    rb_up_var: float


assert tuple(HistoryRow.model_fields)[1:] == FEATURE_COLUMNS  # docs follow the schema

_HISTORY = Field(
    min_length=1,
    description="At least the model's history_rows (GET /v1/model) rows; older rows are ignored.",
)
_HORIZON = Field(default=1, ge=1, description="Steps to forecast; at most the model's max_horizon.")
_QUANTILES = Field(
    default=None,
    description="Upper-bound levels, each one of the model's calibration levels "
    "(GET /v1/model); default [0.9] when calibrated.",
)


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[HistoryRow] = _HISTORY
    horizon: int = _HORIZON
    quantiles: list[float] | None = _QUANTILES


class SeriesHistory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | int = Field(description="Caller's series id, unique within the call; echoed back.")
    history: list[HistoryRow] = _HISTORY


class BatchForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series: list[SeriesHistory] = Field(
        min_length=1, description="Series forecast together in one vectorised call."
    )
    horizon: int = _HORIZON
    quantiles: list[float] | None = _QUANTILES


class ModelRef(BaseModel):
    name: str
    version: str
    family: str


TargetValues = dict[str, float]


class ForecastStep(BaseModel):
    time: str = Field(description="Forecast time, continuing the history's grid (UTC).")
    point: TargetValues = Field(
        description=f"Point forecast per target ({', '.join(TARGET_COLUMNS)}), original units."
    )
    quantiles: dict[str, TargetValues] = Field(
        description='Calibrated upper bound per level ("0.9") and target.'
    )


class ForecastResponse(BaseModel):
    model: ModelRef
    forecasts: list[ForecastStep]


class SeriesForecast(BaseModel):
    id: str | int
    forecasts: list[ForecastStep]


class BatchForecastResponse(BaseModel):
    model: ModelRef
    results: list[SeriesForecast] = Field(description="One entry per series, in request order.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong and how to fix it.")
    field: str | None = Field(
        default=None, description="JSON path of the offending field, e.g. history[3].down."
    )


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    task: str
    version: str
    family: str
    engine: str
    history_rows: int
    max_horizon: int
    step_seconds: float
    calibration: dict[str, Any]
    test_metrics: dict[str, float]
    loaded_at: float


class ReloadResponse(BaseModel):
    outcome: str = Field(description="swapped, unchanged, no_champion or failed.")
    version: str | None
    previous: str | None
    error: str | None
    generation: int = Field(description="Reload generation every worker follows.")


class Status(BaseModel):
    status: str
    version: str | None = None
