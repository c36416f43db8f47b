"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be chosen
before any kernel module is imported; this conftest is loaded first, so it decides here.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else the CPU (interpreter)."""
    return DEVICE
