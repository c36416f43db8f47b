"""The O(B*K) Student-t mixture math in PyTorch (formulation §3, §4).

Everything here is per (row, component) and cheap: the confidence weights and
uncertainties the layers compute around the fused operations, the Gamma scales of the
sampler, and ``log_normaliser``, the reference definition of C_k. (The fused kernels
compute C_k and its nu-derivative themselves, see ``fused/special.py``, so that each
operation is one launch; the tests hold the two against each other.) Gradients here come
from PyTorch autograd.

Nothing here reads tensor values on the host unless asked to (``validate=True``).

Shapes: ``nu`` is [B, K], ``log_sigma`` is [B, K, D], ``log_pi`` and ``available`` are [B, K].
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "log_normaliser",
    "entropy",
    "uncertainty",
    "confidence_log_weights",
    "mixture_uncertainty",
    "row_weights",
    "gamma_scales",
    "scales_from_gamma",
    "check_some_component_available",
]


def log_normaliser(nu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """C_k: log normalising constant of the D-variate Student-t with diagonal scale, [B, K]."""
    dim = log_sigma.shape[-1]
    # The lgamma difference cancels badly in float32 for large nu (lgamma(5e3) ~ 4e4 has an
    # ulp of 4e-3), so it is taken in float64; it is O(B*K), so this costs nothing.
    nu64 = nu.double()
    lgamma_ratio = torch.lgamma(0.5 * (nu64 + dim)) - torch.lgamma(0.5 * nu64)
    return (lgamma_ratio - 0.5 * dim * torch.log(nu64 * math.pi)).to(nu.dtype) - log_sigma.sum(-1)


def entropy(nu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """H_k: differential entropy of each component, [B, K]."""
    dim = log_sigma.shape[-1]
    nu64 = nu.double()
    half_nu_d = 0.5 * (nu64 + dim)
    tail_term = half_nu_d * (torch.digamma(half_nu_d) - torch.digamma(0.5 * nu64))
    return tail_term.to(nu.dtype) - log_normaliser(nu, log_sigma)


def uncertainty(nu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """u_k = H_k / D: entropy per dimension, so the scale does not grow with D."""
    return entropy(nu, log_sigma) / log_sigma.shape[-1]


def check_some_component_available(available: torch.Tensor) -> None:
    """Raise if any row has no available component (its mixture would be empty). Reads the
    mask on the host: one sync."""
    empty = ~available.any(dim=-1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten()[:8].tolist()
        raise ValueError(
            f"{int(empty.sum())} row(s) have every mixture component absent "
            f"(first rows: {rows}); each row needs at least one available component"
        )


def confidence_log_weights(
    uncertainty: torch.Tensor, available: torch.Tensor, tau: float = 1.0, *, validate: bool = False
) -> torch.Tensor:
    """log pi = log_softmax_k(-u_k / tau) over available components, -inf elsewhere.

    A row with no available component gets log pi = NaN (softmax over nothing); with
    ``validate=True`` it raises instead, at the price of one host sync.
    """
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    if available.dtype != torch.bool:
        raise TypeError(f"available must be a bool tensor, got {available.dtype}")
    if available.shape != uncertainty.shape:
        raise ValueError(
            f"available {tuple(available.shape)} must match uncertainty {tuple(uncertainty.shape)}"
        )
    if validate:
        check_some_component_available(available)
    logits = (-uncertainty / tau).masked_fill(~available, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def mixture_uncertainty(log_pi: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
    """ubar = sum_k pi_k u_k: the per-row confidence reported with a prediction."""
    # Mask u before the product: an absent component's u may be inf or NaN, and 0 * inf
    # would be NaN in the backward pass even where the forward value is right.
    safe_u = torch.where(torch.isfinite(log_pi), uncertainty, 0.0)
    return (log_pi.exp() * safe_u).sum(-1)


def row_weights(mean_uncertainty: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """w_b = B * softmax_b(-ubar_b / tau): confident teacher rows count more; mean 1."""
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    return mean_uncertainty.shape[0] * torch.softmax(-mean_uncertainty / tau, dim=0)


MIN_GAMMA = 1e-6


def scales_from_gamma(gamma: torch.Tensor, min_gamma: float = MIN_GAMMA) -> torch.Tensor:
    """w = G^(-1/2): the Student-t scale of a Gamma(nu/2, rate nu/2) draw G (formulation §4).
    G is floored so that a rare near-zero draw cannot give an infinite scale."""
    return gamma.clamp_min(min_gamma).rsqrt()


def gamma_scales(nu: torch.Tensor, num_samples: int, min_gamma: float = MIN_GAMMA) -> torch.Tensor:
    """w = G^(-1/2) with G ~ Gamma(nu/2, rate nu/2), reparameterised, [B, K, S].

    Drawn from torch's default generator (on nu's device); PyTorch's gamma sampler has
    implicit reparameterisation gradients, so nu is trained through the samples. For draws
    keyed per row instead, see ``ops.keyed_gamma_scales``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    nu = nu.to(torch.promote_types(nu.dtype, torch.float32))  # float64 stays float64
    half_nu = (0.5 * nu).unsqueeze(-1).expand(*nu.shape, num_samples)
    gamma = torch.distributions.Gamma(half_nu, half_nu, validate_args=False).rsample()
    return scales_from_gamma(gamma, min_gamma)
