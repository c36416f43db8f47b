"""The consistency-distillation term as the objective uses it (formulation §4, "Consistency distillation").

``distillation_loss(tau_rows, backend, context, mode, per_dim)`` builds L_cd for the objective:

- ``mode="mixture"`` (first formulation): KL between the teacher's and the student's mixtures,
  casd.layers.ConsistencyDistillationLoss;
- ``mode="component"``: the mean over the components both views have of KL(t^T_k || t^S_k),
  each student component towards its own teacher component (:class:`ComponentDistillation`);
- ``per_dim``: L_cd divided by D (nats per embedding dimension, comparable across D);
- under torchrun the row weights are those of the whole global batch
  (:class:`GlobalBatchDistillation`), so N processes compute what one process computes.

Every variant runs through the one fused op, ``casd.kernels.consistency_distillation`` (and its
reference): the per-component KL is that op on single-component mixtures, one row per
(sample, component), so the kernels stay the single implementation of L_cd.
"""
from __future__ import annotations

import torch
from torch import nn

from casd.distributed import DistContext
from casd.kernels import StudentTMixture, consistency_distillation, row_weights
from casd.layers import ConsistencyDistillationLoss
from casd.vocab import DISTILL_MODES

__all__ = ["GlobalBatchDistillation", "ComponentDistillation", "distillation_loss"]


class GlobalBatchDistillation(ConsistencyDistillationLoss):
    """L_cd with the row weights w_b = B softmax_b(-ubar^T_b / tau) taken over the global batch.

    ``local_loss`` computes w over this rank's n rows. For a row of this rank the two differ by
    one per-rank factor, (B / n) * exp(lse_local - lse_global) with lse = logsumexp(-ubar / tau),
    so the local loss is rescaled by it. With one process the factor is exactly 1 and not applied.
    ``per_dim`` divides the result by D.
    """

    def __init__(self, tau: float = 1.0, backend: str = "torch", context: DistContext = DistContext(),
                 per_dim: bool = False):
        super().__init__(tau, backend)
        self.context = context
        self.per_dim = per_dim

    def local_loss(self, teacher: StudentTMixture, student: StudentTMixture,
                   teacher_samples: torch.Tensor) -> torch.Tensor:
        """L_cd over this rank's rows, row weights normalised over them (the mixture KL)."""
        return super().forward(teacher, student, teacher_samples)

    def forward(self, teacher: StudentTMixture, student: StudentTMixture, teacher_samples: torch.Tensor) -> torch.Tensor:
        loss = self.local_loss(teacher, student, teacher_samples)
        if self.per_dim:
            loss = loss / teacher_samples.shape[-1]
        if not self.context.enabled:
            return loss
        ubar = teacher.detach().mean_uncertainty().float()
        local = torch.stack([torch.logsumexp(-ubar / self.tau, dim=0),
                             torch.tensor(float(ubar.shape[0]), device=ubar.device)])
        gathered = self.context.all_gather(local)  # [N, 2]: (lse, rows) per rank
        lse_global, rows_global = torch.logsumexp(gathered[:, 0], dim=0), gathered[:, 1].sum()
        return loss * (rows_global / ubar.shape[0]) * torch.exp(local[0] - lse_global)


class ComponentDistillation(GlobalBatchDistillation):
    """Per-component L_cd (formulation §4): each student component towards its teacher component.

        L = (1/B) sum_b w_b (1/K_b) sum_{k in A_b} (1/S) sum_q (log t^T_k(z_bkq) - log t^S_k(z_bkq))

    over the set A_b of the K_b components available in both views, z_bkq the teacher's S draws
    from its component k: a Monte-Carlo estimate of the mean KL(t^T_k || t^S_k). Unlike the
    mixture KL, it cannot be lowered by making the student's mixture broad (alike, wide
    components under near-uniform pi): every component has its own target, so a component whose
    modalities lost frames is pulled towards the teacher's sharper component, not the reverse.

    It is the fused op on single-component mixtures: the [B, K] components become B*K rows with
    log pi = 0 and point weights 1/S, and the row weights

        w'_bk = w_b * [k in A_b] * K / K_b

    make the op's mean over the B*K rows, (1/(B K)) sum_bk w'_bk KL_bk, equal to L above.
    """

    def local_loss(self, teacher: StudentTMixture, student: StudentTMixture,
                   teacher_samples: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach()
        batch, components, samples, dim = teacher_samples.shape
        w = row_weights(teacher.mean_uncertainty(), self.tau)  # [B]
        both = torch.isfinite(teacher.log_pi) & torch.isfinite(student.log_pi)  # [B, K]
        w_rows = w[:, None] * both * (components / both.sum(1, keepdim=True).clamp_min(1))
        rows = batch * components
        points = teacher_samples.detach().reshape(rows, samples, dim)
        omega = torch.full((rows, samples), 1.0 / samples, device=points.device, dtype=points.dtype)

        def single(m: StudentTMixture) -> tuple[torch.Tensor, ...]:
            log_pi = torch.zeros(rows, 1, device=m.mu.device, dtype=m.mu.dtype)
            return m.mu.reshape(rows, 1, dim), m.log_sigma.reshape(rows, 1, dim), m.nu.reshape(rows, 1), log_pi

        loss, _ = consistency_distillation(points, single(teacher), single(student), omega,
                                           w_rows.reshape(rows), backend=self.backend)
        return loss


def distillation_loss(tau: float, backend: str = "torch", context: DistContext = DistContext(),
                      mode: str = "mixture", per_dim: bool = False) -> nn.Module:
    """L_cd for this process (module docstring); ``tau`` is the temperature of the row weights."""
    if mode not in DISTILL_MODES:
        raise ValueError(f"distillation mode must be one of {DISTILL_MODES}, got {mode!r}")
    if mode == "component":
        return ComponentDistillation(tau, backend, context, per_dim)
    if context.enabled or per_dim:
        return GlobalBatchDistillation(tau, backend, context, per_dim)
    return ConsistencyDistillationLoss(tau, backend)
