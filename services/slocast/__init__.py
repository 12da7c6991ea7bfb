"""slocast: forecasts operational metrics and serves calibrated upper bounds."""

__version__ = "0.1.0"
