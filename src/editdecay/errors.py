"""Error types that carry enough context (file, record, field) for a user to fix their input."""

from __future__ import annotations


class EditDecayError(Exception):
    """Base class: every error editdecay raises on purpose derives from it; the CLI prints it without a traceback."""


class DataError(EditDecayError):
    """A data file or record is malformed. The message names the file, record index and field."""

    def __init__(self, path: str, message: str, index: int | None = None, field: str | None = None):
        self.path, self.index, self.field = str(path), index, field
        where = self.path
        if index is not None:
            where += f", record {index}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ModelError(EditDecayError):
    """A model cannot be found, converted or loaded, or its architecture is unsupported."""


class ConfigError(EditDecayError):
    """A configuration (CLI flags, YAML grid, hyperparameters) is invalid; the message names the key."""


class NumericalError(EditDecayError):
    """A computation produced NaN/inf or an ill-conditioned solve; never written into weights."""
