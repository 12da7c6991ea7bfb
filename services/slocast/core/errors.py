"""Errors users can act on. Each carries the process exit code the CLI returns."""

from __future__ import annotations


class SlocastError(Exception):
    """An error with a one-line message that says what to fix."""

    exit_code = 1


class DatasetError(SlocastError):
    """The input dataset violates the schema or the protocol's rules."""

    exit_code = 2


class ConfigError(SlocastError):
    """A setting is missing or invalid."""

    exit_code = 2
