"""Plain PyTorch references for the three fused operations (formulation §5).

These are the definitions: readable, differentiable by autograd, float64-capable. They
materialise [B, P, K, D] intermediates, which is exactly what the Triton kernels avoid.
Inputs are assumed valid; the public entry points in ``ops`` validate them first.
"""
from __future__ import annotations

import torch

from .host_math import log_normaliser

# One mixture's parameters as the operations take them: (mu [B,K,D], log_sigma [B,K,D],
# nu [B,K], log_pi [B,K]); ``StudentTMixture.params`` gives exactly this tuple.
Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = [
    "Mixture",
    "mixture_logpdf_reference",
    "student_t_rsample_reference",
    "consistency_distillation_reference",
]


def mixture_logpdf_reference(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    nu: torch.Tensor,
    log_pi: torch.Tensor,
) -> torch.Tensor:
    """log p(z_p) = logsumexp_k(log_pi_k + log t_k(z_p)) for z [B,P,D] -> [B,P]."""
    dim = z.shape[-1]
    scaled = (z.unsqueeze(2) - mu.unsqueeze(1)) * torch.exp(-log_sigma).unsqueeze(1)
    mahalanobis = scaled.square().sum(-1)  # [B, P, K]
    nu_p = nu.unsqueeze(1)
    log_t = log_normaliser(nu, log_sigma).unsqueeze(1) - 0.5 * (nu_p + dim) * torch.log1p(
        mahalanobis / nu_p
    )
    return torch.logsumexp(log_pi.unsqueeze(1) + log_t, dim=-1)


def student_t_rsample_reference(
    mu: torch.Tensor, log_sigma: torch.Tensor, scales: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """z_kq = mu_k + sigma_k * eps_kq * scales_kq for mu [B,K,D], scales [B,K,S], eps [B,K,S,D]."""
    return mu.unsqueeze(2) + torch.exp(log_sigma).unsqueeze(2) * eps * scales.unsqueeze(-1)


def consistency_distillation_reference(
    z: torch.Tensor,
    teacher: Mixture,
    student: Mixture,
    omega: torch.Tensor,
    row_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_cd = (1/B) sum_b w_b sum_p omega_bp (log p_T(z_bp) - log p_S(z_bp)), w = row_weights.

    ``teacher`` and ``student`` are (mu, log_sigma, nu, log_pi). The teacher, the points
    and the weights are detached: gradients reach the student parameters only.
    Returns (loss, per-row terms [B]) with loss = per_row.mean().
    """
    z = z.detach()
    log_p_teacher = mixture_logpdf_reference(z, *(t.detach() for t in teacher))
    log_p_student = mixture_logpdf_reference(z, *student)
    per_row = row_weights.detach() * (omega.detach() * (log_p_teacher - log_p_student)).sum(-1)
    return per_row.mean(), per_row
