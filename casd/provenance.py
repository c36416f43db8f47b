"""Provenance: which code and which data produced a run.

Every run records :func:`provenance` in config.json (``record.provenance``), results.json and
its checkpoints:

    casd, git_commit, git_dirty   the casd version, and the commit of the checkout casd was
                                  imported from (``"unknown"`` when casd is not a tracked
                                  file of a git checkout, e.g. installed from a wheel, or git
                                  is missing); dirty: tracked files differ from the commit
    python, torch, triton, numpy  versions (``"not installed"`` for a missing triton)
    data_sha256, data_hashed      SHA-256 of the data: the file's bytes for an MMSA pickle, or
                                  for the synthetic set the generated arrays (:func:`arrays_sha256`),
                                  which also catches a change of the generator's code

Recording never fails a run: anything that cannot be found is ``"unknown"``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from casd._version import __version__

__all__ = ["UNKNOWN", "git_state", "versions", "file_sha256", "arrays_sha256", "provenance"]

UNKNOWN = "unknown"
PACKAGE_DIR = Path(__file__).resolve().parent
_CHUNK = 1 << 20


def _git(*args: str) -> str | None:
    """git's stdout in casd's own folder, or None if git is missing, slow or fails."""
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, str | bool]:
    """The commit casd runs from, and whether tracked files differ from it.

    casd counts as "run from a checkout" only when its own files are tracked by that
    repository: a casd installed into a virtual environment that happens to sit inside some
    other git repository must not claim that repository's commit.
    """
    if _git("ls-files", "--error-unmatch", "_version.py") is None:
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or UNKNOWN, "git_dirty": UNKNOWN if status is None else bool(status)}


def _distribution_version(name: str) -> str:
    # Read from the installed metadata, not by importing: importing triton here could pick
    # its compiled mode before casd.kernels.runtime chooses the interpreter (kernels/runtime.py).
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    import torch  # the version torch reports (a local build may differ from its metadata)

    # str(): torch.__version__ is a str subclass that weights_only checkpoint loading refuses.
    return {"casd": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "triton": _distribution_version("triton"), "numpy": np.__version__}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _update(digest, value: object) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            digest.update(f"key {key!r}\n".encode())
            _update(digest, value[key])
        return
    array = np.asarray(value)
    digest.update(f"array {array.dtype.str} {array.shape}\n".encode())
    if array.dtype.kind == "O":  # pointers in memory: hash the elements' text instead
        for item in array.ravel():
            digest.update(repr(item).encode() + b"\0")
    else:
        digest.update(np.ascontiguousarray(array).tobytes())


def arrays_sha256(arrays: Mapping) -> str:
    """SHA-256 of a (nested) dict of arrays: keys in sorted order, each array's dtype, shape and
    bytes, so equal digests mean equal data whatever order the dict was built in."""
    digest = hashlib.sha256()
    _update(digest, arrays)
    return digest.hexdigest()


def provenance(data_sha256: str, data_hashed: str) -> dict[str, str | bool]:
    """The provenance record of a run (see the module docstring); ``data_hashed`` says what the
    digest covers ("file" or "generated arrays")."""
    return {**versions(), **git_state(), "data_sha256": data_sha256, "data_hashed": data_hashed}
