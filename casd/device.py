"""Where a run computes and in what precision: device names, autocast dtypes, CPU threads.

Training, evaluation and prediction all go through these functions, so "auto" means the same
thing everywhere. (Which GPU a torchrun rank uses is decided by ``casd.distributed``.)
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from casd.errors import ConfigError
from casd.vocab import AMP_MODES

__all__ = ["AMP_DTYPES", "resolve_device", "resolve_amp", "autocast_context", "set_threads"]

# Autocast dtype of each explicit --amp mode; None runs in full precision.
# (AMP_MODES is these and "auto".)
AMP_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; otherwise torch's own device names."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: not a device name (auto, cpu, cuda, cuda:1, ...)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available here")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means full precision."""
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "auto":
        if device.type != "cuda":
            return None  # CPU autocast rarely pays off and bf16 matmuls are slow on many CPUs
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type == "cpu":
        raise ConfigError("--amp fp16 needs a GPU; use bf16 or off on the CPU")
    return AMP_DTYPES[amp]


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """torch.autocast at ``amp_dtype`` on ``device``'s type, or no autocast for None."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def set_threads(threads: int | None) -> None:
    """CPU threads for torch's intra-op pool; None keeps torch's choice."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
