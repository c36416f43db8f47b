"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be chosen
before any kernel module is imported; this conftest is loaded first, so it decides here.
"""
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else the CPU (interpreter)."""
    return DEVICE


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh random inputs on every run; the seed is printed so a failure can be replayed."""
    seed = random.SystemRandom().randrange(2**31)
    print(f"random inputs from seed {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def poison_new_tensors(monkeypatch):
    """Fill every float tensor from torch.empty / empty_like with NaN, so an output element a
    kernel forgets to write shows up instead of passing as whatever memory held."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(real_empty_like(*a, **k)))


@pytest.fixture
def forbid_kernel_launch(monkeypatch):
    """forbid_kernel_launch(module, name): any launch of that kernel fails the test, so a check
    that must run before launching is shown to run before it."""

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched")

    def forbid(module, kernel_name: str) -> None:
        monkeypatch.setattr(module, kernel_name, NoLaunch())

    return forbid
