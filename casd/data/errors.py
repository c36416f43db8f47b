"""The data layer's errors: each is a `casd.errors.DataError` (one line, exit status 2).

They are also `ValueError`s, the type the entry points and callers caught before these
classes existed, so a bad file keeps reaching the user as one line wherever a caller still
catches ValueError. The pickle errors are also `pickle.UnpicklingError`s, as the stock
unpickler's would be.
"""
from __future__ import annotations

import pickle

from casd.errors import DataError

__all__ = ["InvalidDataError", "UnreadablePickleError", "UnsafePickleError", "CorruptPickleError",
           "PickleTooLargeError"]


class InvalidDataError(DataError, ValueError):
    """A data file, split, key or value that cannot be used; the message names which."""


class UnreadablePickleError(InvalidDataError, pickle.UnpicklingError):
    """A feature pickle that was not loaded; nothing in it was executed."""


class UnsafePickleError(UnreadablePickleError):
    """The pickle asks for something outside the allow-list (a name, an opcode, an array layout)."""


class CorruptPickleError(UnreadablePickleError):
    """The pickle is truncated or malformed (bad opcode, stack underflow, bad text encoding)."""


class PickleTooLargeError(UnreadablePickleError):
    """The pickle would decode to more memory than the limit allows (see `restricted_load`)."""
