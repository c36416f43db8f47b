"""Numerical faults injected into a real objective, for the trainer's non-finite guard tests.

``Faulty(objective, fault)`` calls the real objective and, when ``fault(call)`` says so for the
call-th training step (counted from 0), spoils it: ``"loss"`` makes the loss NaN; ``"gradients"``
keeps the loss finite but makes every gradient NaN (an overflow in the backward pass, the case a
loss check alone misses). ``install(fault)`` wraps the objective casd.train builds, so a whole
``casd.train.main`` run (also under torchrun, from a driver script) sees the faults.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class NaNGradient(torch.autograd.Function):
    """The identity forward; NaN gradients backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class Faulty(nn.Module):
    def __init__(self, objective: nn.Module, fault: Callable[[int], str | None]):
        super().__init__()
        self.objective = objective
        self.fault = fault
        self.calls = 0

    def forward(self, model, teacher, student, noise_seed=None):
        losses = self.objective(model, teacher, student, noise_seed)
        kind = self.fault(self.calls)
        self.calls += 1
        if kind == "loss":
            losses.total = losses.total * float("nan")
        elif kind == "gradients":
            losses.total = NaNGradient.apply(losses.total)
        elif kind is not None:
            raise ValueError(kind)
        return losses


def install(monkeypatch_or_module, fault: Callable[[int, int], str | None]) -> None:
    """Wrap every objective casd.train builds; ``fault(call, rank)``. Takes a pytest monkeypatch,
    or None to patch casd.train for good (a driver script)."""
    import casd.train

    real = casd.train.build_model_and_objective

    def build(config, meta, context=casd.train.DistContext()):
        model, objective = real(config, meta, context)
        return model, Faulty(objective, lambda call: fault(call, context.rank))

    if monkeypatch_or_module is None:
        casd.train.build_model_and_objective = build
    else:
        monkeypatch_or_module.setattr(casd.train, "build_model_and_objective", build)
