"""A run's output folder, and how files get into it.

**The folder** (``--out``) is checked before any work and created only after the data, the
config and the model have been validated, so a refused run leaves nothing behind:

- ``check_output_dir``, read-only, on every rank: ``--out`` must be a folder (or not exist
  yet) somewhere we may write; a folder that already holds files is refused unless the run
  is told what to do with them: ``--resume`` continues the run there (its last.pt),
  ``--overwrite`` replaces it. Silently writing into a finished run would mix two models.
- ``prepare_output_dir``, on rank 0 once everything is validated, creates the folder and,
  with ``--overwrite``, removes every file a run writes (``RUN_FILES``) before anything new
  is written. Results go first, so a crash half-way leaves a folder without results, never
  results next to another model's checkpoints. Files casd does not write are left alone. A
  resumed run removes its results (``RESULT_FILES``) once its checkpoint has been accepted
  (casd.train): it rewrites them, and it may change its learning rate or epochs.

  Why remove rather than train in a temporary folder and swap it in at the end: a run that
  is killed must stay resumable where the user pointed it (``--resume --out`` finds its
  last.pt, and train.log shows its progress), which a hidden temporary folder would break;
  and ``--overwrite`` says the old run may go.

**Files** are written atomically and durably (``atomic_write``): into a temporary sibling
(``<name>.tmp``), flushed and fsynced, renamed over the target, then the folder is fsynced so
the rename itself survives a power cut. A reader (or a crash) sees the old file or the new
one, never a torn one. JSON is strict (``write_json``): NaN and infinities, which
``json.dumps`` would write as the non-JSON tokens ``NaN``/``Infinity``, become ``null``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from casd.errors import CheckpointError, OutputError

__all__ = ["RESULT_FILES", "RUN_FILES", "atomic_write", "write_text", "write_json", "strict_json", "fsync_dir",
           "check_output_dir", "prepare_output_dir", "remove_files", "check_writable_folder", "check_writable_file"]

# What casd.train writes, results first: results.json is the mark of a finished run (the study
# reuses a folder by it), so it is the first to go and the last to be written.
RESULT_FILES = ("results.json", "predictions.npz", "results.txt", "robustness.png", "robustness.pdf")
RUN_FILES = (*RESULT_FILES, "best.pt", "last.pt", "config.json", "train.log")
TMP_SUFFIX = ".tmp"


# --- writing files ------------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of folder ``path`` (a rename, a new or removed file) durable."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder; its renames are durable enough
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """``write(handle)`` into a temporary sibling of ``path``, then fsync, rename over ``path``
    and fsync the folder. A failure leaves ``path`` as it was (and no temporary file); an
    OSError (disk full, permissions) is an OutputError naming the file."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def strict_json(value: Any) -> Any:
    """``value`` as strict JSON values: non-finite floats become None (JSON null), numpy
    scalars and arrays become Python numbers and lists, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    """``value`` as strict JSON (see ``strict_json``), atomically."""
    write_text(path, json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n")


# --- the output folder ----------------------------------------------------------------------------
def _entries(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.is_dir() else []


def check_writable_folder(path: Path, flag: str, given: Path | None = None) -> None:
    """``path`` is, or can become, a folder we may write in (nothing is created); messages
    name ``given`` (default ``path``) as the value of ``flag``."""
    given = path if given is None else given
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {given}: {path} is a file, not a folder" if given != path
                          else f"{flag} {path}: is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{flag} {given}: {existing} is a file, not a folder")
    # Try it rather than reason about modes: root, ACLs, read-only and virtual file systems all
    # answer a real attempt correctly. The probe folder is removed at once.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".casd-write-probe-", dir=existing))
    except OSError as exc:
        raise OutputError(f"{flag} {given}: cannot write in {existing} ({exc.strerror or exc})") from exc


def check_output_dir(path: Path, resume: bool, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, or that holds files the run was not
    told to continue (``resume``) or replace (``overwrite``). Reads only; creates nothing."""
    if resume and overwrite:
        raise OutputError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    check_writable_folder(path, flag)
    if resume:
        if not (path / "last.pt").is_file():
            raise CheckpointError(f"--resume: no checkpoint {path / 'last.pt'} (a run that stopped before its "
                                  "first epoch ended has none: start it again with --overwrite)")
        return
    entries = _entries(path)
    if entries and not overwrite:
        what = "a finished run" if "results.json" in entries else "files"
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise OutputError(f"{flag} {path} already holds {what} ({shown}); pass --overwrite to replace that run, "
                          "--resume to continue it, or choose another folder")


def remove_files(path: Path, names: tuple[str, ...] | list[str]) -> list[str]:
    """Remove the files ``names`` from folder ``path`` in this order (those that exist), durably;
    returns the names removed."""
    removed = []
    for name in names:
        target = path / name
        if target.is_file() or target.is_symlink():
            try:
                target.unlink()
            except OSError as exc:
                raise OutputError(f"{target}: cannot remove the old run's file: {exc.strerror or exc}") from exc
            removed.append(name)
    if removed:
        fsync_dir(path)
    return removed


def prepare_output_dir(path: Path, overwrite: bool) -> list[str]:
    """Create the folder; with ``overwrite`` remove the old run's files (``RUN_FILES``, results
    first). Temporary files of an interrupted write go in any case. Returns the names removed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output folder: {exc.strerror or exc}") from exc
    fsync_dir(path.parent)  # the folder's own entry
    stale = [name for name in _entries(path) if name.endswith(TMP_SUFFIX)]
    return remove_files(path, [*(RUN_FILES if overwrite else ()), *stale])


def check_writable_file(path: Path, flag: str = "--out") -> None:
    """``path`` can be written as a file: it is not a folder, and its folder is (or can become) writable."""
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder, not a file")
    check_writable_folder(path.parent, flag, given=path)
