"""Public entry points of the three CASD operations, with a backend switch.

``backend="torch"`` runs the plain PyTorch references; ``backend="triton"`` runs the fused
kernels (on CUDA, or through Triton's CPU interpreter when the tensors are on the CPU).
Both backends see the same validated inputs and return the same shapes.
"""
from __future__ import annotations

import torch

from . import runtime
from .reference import (
    consistency_distillation_reference,
    mixture_logpdf_reference,
    student_t_rsample_reference,
)
from .validation import (
    check_mixture,
    check_points,
    check_row_weights,
    check_sample_inputs,
    check_seed,
)

__all__ = [
    "BACKENDS",
    "mixture_logpdf",
    "student_t_rsample",
    "student_t_rsample_with_noise",
    "consistency_distillation",
]

BACKENDS = ("torch", "triton")

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def mixture_logpdf(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    nu: torch.Tensor,
    log_pi: torch.Tensor,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    """log p(z) of a Student-t mixture: z [B,P,D], mu/log_sigma [B,K,D], nu/log_pi [B,K] -> [B,P]."""
    _check_backend(backend)
    batch, _, dim = check_mixture(mu, log_sigma, nu, log_pi)
    check_points(z, batch, dim, mu.device)
    if backend == "torch":
        return mixture_logpdf_reference(z, mu, log_sigma, nu, log_pi)
    return runtime.triton_ops(z.device).mixture_logpdf_triton(z, mu, log_sigma, nu, log_pi)


def student_t_rsample(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    w: torch.Tensor,
    seed: int,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    """z_kq = mu_k + sigma_k * eps_kq * w_kq with eps ~ N(0, I) drawn from ``seed`` -> [B,K,S,D].

    The two backends draw eps from different generators (PyTorch's for "torch", Triton's
    counter-based one for "triton"): same distribution, different streams. Each backend is
    bitwise repeatable for a given seed.
    """
    _check_backend(backend)
    batch, components, samples, dim = check_sample_inputs(mu, log_sigma, w)
    check_seed(seed)
    if backend == "torch":
        generator = torch.Generator(device=mu.device).manual_seed(seed)
        eps = torch.randn(
            (batch, components, samples, dim), generator=generator, device=mu.device, dtype=mu.dtype
        )
        return student_t_rsample_reference(mu, log_sigma, w, eps)
    return runtime.triton_ops(mu.device).student_t_rsample_triton(mu, log_sigma, w, seed)


def student_t_rsample_with_noise(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    w: torch.Tensor,
    eps: torch.Tensor,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    """``student_t_rsample`` with the Gaussian noise eps [B,K,S,D] given (for tests)."""
    _check_backend(backend)
    check_sample_inputs(mu, log_sigma, w, eps)
    if backend == "torch":
        return student_t_rsample_reference(mu, log_sigma, w, eps)
    return runtime.triton_ops(mu.device).student_t_rsample_with_noise_triton(mu, log_sigma, w, eps)


def consistency_distillation(
    z: torch.Tensor,
    teacher: Mixture,
    student: Mixture,
    omega: torch.Tensor,
    w: torch.Tensor,
    *,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence-weighted Monte-Carlo KL(p_T || p_S) at teacher samples z [B,P,D].

    ``teacher`` and ``student`` are (mu, log_sigma, nu, log_pi); ``omega`` [B,P] are the
    point weights, ``w`` [B] the row weights. Returns (scalar loss, per-row terms [B]);
    gradients reach the student parameters only.
    """
    _check_backend(backend)
    batch, _, dim = check_mixture(*teacher, role="teacher")
    student_shape = check_mixture(*student, role="student")
    if student_shape != (batch, teacher[0].shape[1], dim):
        raise ValueError(
            f"student mixture [B,K,D] = {list(student_shape)} must match the teacher's "
            f"{[batch, teacher[0].shape[1], dim]}"
        )
    if student[0].device != teacher[0].device:
        raise ValueError(f"student is on {student[0].device} but teacher is on {teacher[0].device}")
    points = check_points(z, batch, dim, teacher[0].device)
    check_row_weights(omega, w, batch, points, teacher[0].device)
    if backend == "torch":
        return consistency_distillation_reference(z, teacher, student, omega, w)
    return runtime.triton_ops(z.device).consistency_distillation_triton(z, teacher, student, omega, w)
