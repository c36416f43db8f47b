"""The consistency-distillation term as the objective uses it (formulation §4, "Consistency distillation").

``distillation_loss(tau, backend, context)`` is casd.layers.ConsistencyDistillationLoss in one
process and :class:`GlobalBatchDistillation` under torchrun, where the row weights must be
those of the whole global batch for N processes to compute what one process computes.
"""
from __future__ import annotations

import torch
from torch import nn

from casd.distributed import DistContext
from casd.kernels import StudentTMixture
from casd.layers import ConsistencyDistillationLoss

__all__ = ["GlobalBatchDistillation", "distillation_loss"]


class GlobalBatchDistillation(ConsistencyDistillationLoss):
    """L_cd with the row weights w_b = B softmax_b(-ubar^T_b / tau) taken over the global batch.

    The parent computes w over this rank's n rows. For a row of this rank the two differ by one
    per-rank factor, (B / n) * exp(lse_local - lse_global) with lse = logsumexp(-ubar / tau), so
    the local loss is rescaled by it. With one process the factor is exactly 1 and not applied.
    """

    def __init__(self, tau: float = 1.0, backend: str = "torch", context: DistContext = DistContext()):
        super().__init__(tau, backend)
        self.context = context

    def forward(self, teacher: StudentTMixture, student: StudentTMixture, teacher_samples: torch.Tensor) -> torch.Tensor:
        loss = super().forward(teacher, student, teacher_samples)
        if not self.context.enabled:
            return loss
        ubar = teacher.detach().mean_uncertainty().float()
        local = torch.stack([torch.logsumexp(-ubar / self.tau, dim=0),
                             torch.tensor(float(ubar.shape[0]), device=ubar.device)])
        gathered = self.context.all_gather(local)  # [N, 2]: (lse, rows) per rank
        lse_global, rows_global = torch.logsumexp(gathered[:, 0], dim=0), gathered[:, 1].sum()
        return loss * (rows_global / ubar.shape[0]) * torch.exp(local[0] - lse_global)


def distillation_loss(tau: float, backend: str = "torch", context: DistContext = DistContext()) -> nn.Module:
    """L_cd for this process: the plain layer alone, the global-batch one under several processes."""
    if context.enabled:
        return GlobalBatchDistillation(tau, backend, context)
    return ConsistencyDistillationLoss(tau, backend)
