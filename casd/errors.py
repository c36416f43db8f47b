"""Failures the user can fix: each reaches the command line as one line and exit status 2.

Anything else that escapes a command is a bug in casd and keeps its traceback. The entry
points (train, predict, study) catch ``UserError`` once, at the top (``casd.cli.run_command``),
print ``<program>: error: <message>`` and exit with ``UserError.exit_code``; messages therefore
are one line that names the file, split, key or flag at fault and says what would be accepted.
"""
from __future__ import annotations

__all__ = ["UserError", "DataError", "ConfigError", "CheckpointError", "OutputError", "DivergenceError"]


class UserError(Exception):
    """A failure caused by the input, flags or files the user gave (exit status 2)."""

    exit_code = 2


class DataError(UserError):
    """A data file, split, key or value that cannot be used (unsafe, corrupt, inconsistent)."""


class ConfigError(UserError):
    """A flag or configuration value outside its valid range."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or from an incompatible run."""


class OutputError(UserError):
    """An output folder that cannot be written, or that would overwrite a finished run."""


class DivergenceError(UserError):
    """Training produced non-finite losses or gradients too many steps in a row: the settings
    (learning rate, precision) do not suit the data. The run's last.pt can be resumed with
    safer ones (casd.checkpoint.RESUME_SAFE)."""
