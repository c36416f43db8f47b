"""One error path for every command: a failure the user can fix is one line and exit status 2.

Every entry point's ``main`` is ``return run_command(PROGRAM, body)``, and parses its flags
with :class:`CommandParser` inside ``body``. What reaches the user:

    casd.train: error: <message naming the file, split, key or flag>      exit 2

for

- a ``casd.errors.UserError`` (bad data, flags, config files, checkpoints, output folders, a
  diverged run): the message is printed as one line (a multi-line message is joined with
  "; "), so logs and shells see exactly one line;
- a parse error of the flags (argparse's usage block would be another dozen lines: the
  error names the flag, and ``--help`` shows the usage);
- running out of memory (``MemoryError``, ``torch.OutOfMemoryError``, torch's CPU allocator):
  not a bug, but the settings asked for more than the machine has;
- Ctrl-C: ``<program>: interrupted`` and exit 130 (the shell's code for SIGINT).

Anything else is a bug in casd and keeps its traceback. ``CASD_TRACEBACK=1`` shows the
traceback of the failures above too (for a bug report). Under torchrun every rank prints its
own line, tagged with its rank.

This module sits with the tables (it needs only ``casd.errors``), so every entry point,
including ``python -m casd.data.synthetic``, can use it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn

from casd.errors import ConfigError, UserError

__all__ = ["CommandParser", "run_command", "one_line", "INTERRUPTED_EXIT_CODE"]

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a Ctrl-C
# Messages of torch's CPU allocator (a plain RuntimeError) when an allocation fails.
_CPU_OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


class CommandParser(argparse.ArgumentParser):
    """argparse that raises a one-line ConfigError naming the flag instead of printing its usage
    block and exiting (``--help`` still prints and exits 0)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def one_line(message: str) -> str:
    """``message`` on one line: its non-empty lines, stripped and joined with "; "."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # if torch was never imported it raised nothing
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CPU_OOM_MESSAGES)


def _tag() -> str:
    """`` (rank N)`` under torchrun, where every process prints its own line."""
    return f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def run_command(program: str, body: Callable[[], object], cleanup: Callable[[], None] | None = None) -> int:
    """Run ``body`` (a command's work, flag parsing included) and return the exit status:
    0, 2 (``UserError``, out of memory), or 130 (Ctrl-C). ``cleanup`` runs in every case."""
    show_traceback = os.environ.get("CASD_TRACEBACK", "") not in ("", "0")
    try:
        body()
    except UserError as exc:
        if show_traceback:
            raise
        print(f"{program}: error{_tag()}: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{program}: interrupted{_tag()}", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT_CODE
    except (MemoryError, RuntimeError) as exc:
        if show_traceback or not _is_out_of_memory(exc):
            raise
        detail = one_line(str(exc)) or type(exc).__name__
        print(f"{program}: error{_tag()}: out of memory ({type(exc).__name__}: {detail[:300]}); smaller "
              "settings (batch size, model width, samples per component) or a machine with more memory would fit",
              file=sys.stderr, flush=True)
        return UserError.exit_code
    finally:
        if cleanup is not None:
            cleanup()
    return 0
