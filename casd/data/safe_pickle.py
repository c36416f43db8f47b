"""Read MMSA feature pickles without letting them run code.

`pickle.load` calls whatever callable the file names, so a feature file from the internet
could run arbitrary code. `restricted_load` resolves names through an allow-list holding only
what pickled numpy arrays, numpy scalars, dtypes and plain containers need; every other name
raises `UnsafePickleError` before anything is called.

Real MMSA pickles were written by numpy 1.x (module `numpy.core.multiarray`); numpy 2.x
writes `numpy._core.multiarray`. Both spellings map to the installed numpy's functions, so
either file reads under either numpy without touching the deprecated `numpy.core` shim.
"""
from __future__ import annotations

import os
import pickle
from typing import BinaryIO

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the numpy allow-list; nothing was executed."""


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Stands in for `_codecs.encode`: protocols 0-2 store bytes as latin-1 text."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], object]:
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct  # ndarray
        table[(f"{core}.multiarray", "scalar")] = _multiarray.scalar  # numpy scalars
        table[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer  # protocol 5 arrays
    # Plain containers: sets need a name below protocol 4 (`__builtin__` below protocol 3).
    for builtins in ("builtins", "__builtin__"):
        table[(builtins, "set")] = set
        table[(builtins, "frozenset")] = frozenset
    return table


ALLOWED_GLOBALS: dict[tuple[str, str], object] = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` admits only `ALLOWED_GLOBALS`."""

    def __init__(self, file: BinaryIO, source: str = "<stream>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load {module}.{name}; only numpy arrays, numpy "
                f"scalars/dtypes and plain containers are allowed in a feature pickle"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError(f"{self.source}: persistent ids are not allowed ({pid!r})")


def restricted_load(path_or_file: str | os.PathLike | BinaryIO) -> object:
    """Unpickle a file (path or binary file object) through `RestrictedUnpickler`."""
    if hasattr(path_or_file, "read"):
        source = getattr(path_or_file, "name", "<stream>")
        return RestrictedUnpickler(path_or_file, source=str(source)).load()
    with open(path_or_file, "rb") as handle:
        return RestrictedUnpickler(handle, source=os.fspath(path_or_file)).load()
