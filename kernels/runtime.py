"""Where the Triton kernels run: compiled on CUDA, or through Triton's CPU interpreter.

Triton decides between compiling and interpreting when a ``@triton.jit`` function is
defined, from the ``TRITON_INTERPRET`` environment variable. That includes Triton's own
library functions (``tl.randn4x``), defined when ``triton.language`` is first imported,
which PyTorch may do by itself (building an optimizer imports torch._dynamo, which imports
triton). So:

- on a machine without CUDA, where the kernels can only be interpreted, importing this
  module selects the interpreter at once, before anything else imports triton;
- the kernel modules are imported lazily, on first use, in the mode the device of the
  first tensors needs; one process runs the kernels in one mode.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings

import torch

from . import interpreter_compat

__all__ = ["BackendUnavailableError", "triton_available", "interpreter_enabled", "triton_ops"]


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


_loaded: types.ModuleType | None = None
# True when this module, not the user, turned the interpreter on (so it warns once).
_chose_interpreter = False

if not torch.cuda.is_available() and "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
    _chose_interpreter = True


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _select_interpreter() -> None:
    """Run the kernels interpreted in this process, or explain why that is too late."""
    global _chose_interpreter
    if not interpreter_enabled():
        os.environ["TRITON_INTERPRET"] = "1"
        _chose_interpreter = True
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.randn4x, InterpretedFunction):
        raise BackendUnavailableError(
            "triton was imported in compiled mode before the CPU interpreter could be chosen "
            "(torch imports it when an optimizer or torch.compile is first used); set "
            "TRITON_INTERPRET=1 before starting Python, or import casd.kernels first"
        )
    if _chose_interpreter:
        warnings.warn(
            "casd.kernels: no CUDA tensors, so the Triton kernels run through Triton's CPU "
            "interpreter. Results are exact but it is slow; use a GPU for speed.",
            RuntimeWarning,
            stacklevel=4,
        )
    # Triton 3.6's interpreter breaks under numpy >= 2.4; see interpreter_compat.
    interpreter_compat.apply()


def triton_ops(device: torch.device) -> types.ModuleType:
    """The ``fused`` subpackage (the Triton launchers), imported in the mode ``device`` needs."""
    global _loaded
    if not triton_available():
        raise BackendUnavailableError(
            "backend 'triton' needs the triton package (pip install triton); use backend='torch'"
        )
    if device.type not in ("cuda", "cpu"):
        raise BackendUnavailableError(
            f"backend 'triton' runs on CUDA or, through the interpreter, on the CPU; got {device}"
        )
    if _loaded is None:
        if device.type == "cpu":
            _select_interpreter()
        try:
            _loaded = importlib.import_module(".fused", __package__)
        except ImportError as exc:
            raise BackendUnavailableError(f"could not load the Triton kernels: {exc}") from exc
    mode_interpreted = interpreter_enabled()
    if device.type == "cuda" and mode_interpreted:
        raise BackendUnavailableError(
            "the Triton kernels were loaded in interpreter mode (TRITON_INTERPRET=1, or CPU "
            "tensors came first), so they cannot run on CUDA in this process; unset "
            "TRITON_INTERPRET and keep the tensors on one device type"
        )
    if device.type == "cpu" and not mode_interpreted:
        raise BackendUnavailableError(
            "the Triton kernels were compiled for CUDA in this process and cannot take CPU "
            "tensors; move the tensors to CUDA or use backend='torch'"
        )
    return _loaded
