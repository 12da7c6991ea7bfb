"""The prediction server: the champion forecaster behind a fast HTTP API."""
