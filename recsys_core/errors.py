"""Errors that reach users: each names what is wrong and where."""

from __future__ import annotations

from pathlib import Path


class FedrecError(Exception):
    """Base class for errors the CLI reports as one clear line instead of a traceback."""


class ConfigError(FedrecError, ValueError):
    """An invalid configuration value, reported before any work starts."""


class DataFormatError(FedrecError, ValueError):
    """A data file that cannot be parsed.

    ``line`` is 1-based; it is ``None`` when the problem concerns the whole file.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class DatasetNotFoundError(FedrecError, FileNotFoundError):
    """A dataset file is missing and cannot be downloaded."""
