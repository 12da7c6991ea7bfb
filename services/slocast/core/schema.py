"""The LTE dataset schema and the protocol-A targets."""

from __future__ import annotations

TIME_COLUMN = "time"

# Model inputs, in the one canonical order used by training and serving.
FEATURE_COLUMNS: tuple[str, ...] = (
    "down",
    "up",
    "rnti_count",
    "mcs_down",
    "mcs_down_var",
    "mcs_up",
    "mcs_up_var",
    "rb_down",
    "rb_down_var",
    "rb_up",
    "rb_up_var",
)

# Forecast targets (protocol A), in output order.
TARGET_COLUMNS: tuple[str, ...] = ("rnti_count", "rb_down", "rb_up", "down", "up")

# Columns whose NRMSE makes the headline metric.
HEADLINE_COLUMNS: tuple[str, ...] = ("down", "up")

TARGET_INDEX: tuple[int, ...] = tuple(FEATURE_COLUMNS.index(c) for c in TARGET_COLUMNS)

# Rows are two minutes apart in every site of the dataset.
DEFAULT_STEP_SECONDS = 120
