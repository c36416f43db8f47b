"""Public entry points of the three CASD operations, with a backend switch.

``backend="torch"`` runs the plain PyTorch references; ``backend="triton"`` runs the fused
kernels (on CUDA, or through Triton's CPU interpreter when the tensors are on the CPU) as
the custom ops ``torch.ops.casd.*`` (``custom_ops``). Both backends see the same checked
inputs, return the same shapes and, for the sampler, draw the same noise for the same key.

The hot path never synchronises: structure (types, shapes, dtypes, devices) is checked
from metadata on every call, values only with ``validate=True`` (see ``validation``).
Under ``torch.compile(fullgraph=True)`` every function here traces into one graph.
"""
from __future__ import annotations

import torch

from . import custom_ops, host_math, philox
from .reference import (
    Mixture,
    consistency_distillation_reference,
    mixture_logpdf_reference,
    student_t_rsample_reference,
)
from .validation import (
    check_cd_weights,
    check_finite,
    check_mixture,
    check_mixture_values,
    check_points,
    check_sample_inputs,
    check_seed,
)

__all__ = [
    "BACKENDS",
    "mixture_logpdf",
    "student_t_rsample",
    "student_t_rsample_with_noise",
    "keyed_gamma_scales",
    "consistency_distillation",
]

BACKENDS = ("torch", "triton")
_DEFAULT_TILES = (0, 0)  # the custom ops' "device default" tile override


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
    validate: bool = False,
) -> torch.Tensor:
    """log p(z) of a Student-t mixture: z [B,P,D], mu/log_sigma [B,K,D], nu/log_pi [B,K] -> [B,P].

    Differentiable in all five inputs. log_pi = -inf marks an absent component. The
    triton backend is one kernel launch forward and one backward.
    """
    _check_backend(backend)
    batch, _, dim = check_mixture(mu, log_sigma, nu, log_pi)
    check_points(z, batch, dim, mu.device)
    if validate:
        check_mixture_values(mu, log_sigma, nu, log_pi)
        check_finite({"z": z})
    if backend == "torch":
        return mixture_logpdf_reference(z, mu, log_sigma, nu, log_pi)
    return torch.ops.casd.mixture_logpdf(z, mu, log_sigma, nu, log_pi, *_DEFAULT_TILES)


def _key_tensor(seed: torch.Tensor | int, device: torch.device) -> torch.Tensor:
    """The seed as a device tensor. An int becomes one by a fill (no host-to-device copy,
    which on a GPU would wait for the queue)."""
    if isinstance(seed, torch.Tensor):
        return seed
    return torch.full((), seed, dtype=torch.int64, device=device)


def student_t_rsample(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    scales: torch.Tensor,
    seed: torch.Tensor | int,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    """z_kq = mu_k + sigma_k * eps_kq * scales_kq with eps ~ N(0, I) keyed by ``seed`` -> [B,K,S,D].

    ``scales`` [B,K,S] are the Gamma scales (``host_math.gamma_scales``). ``seed`` is an int
    in [0, 2**63) or an int64 tensor on mu's device: one key ([] or [1]) for the call, or
    one key per row ([B]); a row's noise then depends on its key alone, not on its place
    in the batch. Keys in device tensors are read only by the device (no host sync; a
    CUDA graph replays with whatever key the tensor holds). Both backends draw the same
    eps (Philox-4x32-10, ``philox.keyed_normal``): bitwise repeatable per key and backend,
    equal across backends up to the last ulp of Box-Muller's log/sin/cos.
    """
    _check_backend(backend)
    batch, components, samples, dim = check_sample_inputs(mu, log_sigma, scales)
    key = _key_tensor(check_seed(seed, batch, mu.device), mu.device)
    if backend == "torch":
        eps = philox.keyed_normal(key, batch, components, samples, dim).to(torch.promote_types(mu.dtype, torch.float32))
        return student_t_rsample_reference(mu, log_sigma, scales, eps)
    return torch.ops.casd.student_t_rsample(mu, log_sigma, scales, key, None, *_DEFAULT_TILES)


def keyed_gamma_scales(
    nu: torch.Tensor,
    num_samples: int,
    seed: torch.Tensor | int,
    *,
    backend: str = "torch",
    min_gamma: float = host_math.MIN_GAMMA,
) -> torch.Tensor:
    """``host_math.gamma_scales`` with the Gamma draws keyed like ``student_t_rsample``'s noise.

    w = (X / alpha)^(-1/2) [B, K, S] with X ~ Gamma(alpha, 1), alpha = nu / 2, drawn from
    ``seed`` (an int, or an int64 device tensor of one key or one key per row; stream 1 of
    the key, so the sampler's noise from the same key is independent of it). Both backends
    draw the same X (``philox.keyed_standard_gamma``; the triton backend in one launch).
    nu is trained through the draws by implicit reparameterisation (Figurnov et al., 2018):
    dX/dalpha = -(dF(X; alpha)/dalpha) / f(X; alpha), PyTorch's ``_standard_gamma_grad``,
    the derivative ``torch.distributions.Gamma.rsample`` uses.
    """
    _check_backend(backend)
    if not isinstance(nu, torch.Tensor) or nu.dim() != 2 or not nu.is_floating_point():
        raise ValueError(f"nu must be a float [B, K] tensor, got {getattr(nu, 'shape', type(nu).__name__)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = nu.shape[0]
    key = _key_tensor(check_seed(seed, batch, nu.device), nu.device)
    alpha = 0.5 * nu.to(torch.promote_types(nu.dtype, torch.float32))
    if backend == "torch":
        draw = philox.keyed_standard_gamma(alpha.detach(), key, num_samples)
    else:
        draw = torch.ops.casd.keyed_standard_gamma(nu.detach(), key, num_samples)
    alpha = alpha.unsqueeze(-1)
    if alpha.requires_grad and torch.is_grad_enabled():
        # value: the draw; gradient in alpha: dX/dalpha (implicit reparameterisation)
        slope = torch._standard_gamma_grad(alpha.detach().expand_as(draw), draw)
        draw = draw + (alpha - alpha.detach()) * slope
    return host_math.scales_from_gamma(draw / alpha, min_gamma)


def student_t_rsample_with_noise(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    scales: torch.Tensor,
    eps: torch.Tensor,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    """``student_t_rsample`` with the Gaussian noise eps [B,K,S,D] given (for tests; no gradient for eps)."""
    _check_backend(backend)
    check_sample_inputs(mu, log_sigma, scales, eps)
    if backend == "torch":
        return student_t_rsample_reference(mu, log_sigma, scales, eps.detach())
    key = torch.zeros((), dtype=torch.int64, device=mu.device)  # not read on this path
    return torch.ops.casd.student_t_rsample(mu, log_sigma, scales, key, eps.detach(), *_DEFAULT_TILES)


def consistency_distillation(
    z: torch.Tensor,
    teacher: Mixture,
    student: Mixture,
    omega: torch.Tensor,
    row_weights: torch.Tensor,
    *,
    backend: str = "torch",
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence-weighted Monte-Carlo KL(p_T || p_S) at teacher samples z [B,P,D].

    ``teacher`` and ``student`` are (mu, log_sigma, nu, log_pi); ``omega`` [B,P] are the
    point weights, ``row_weights`` [B] the row weights. Returns (scalar loss, per-row terms
    [B]) with loss = per_row.mean(); gradients reach the student parameters only. The
    triton backend is one kernel launch (which also computes the student's per-row
    gradients when they are needed) and a mean; its backward is one multiplication.
    """
    _check_backend(backend)
    batch, components, dim = check_mixture(*teacher, role="teacher")
    student_shape = check_mixture(*student, role="student")
    if student_shape != (batch, components, dim):
        raise ValueError(
            f"student mixture [B,K,D] = {list(student_shape)} must match the teacher's "
            f"{[batch, components, dim]}"
        )
    if student[0].device != teacher[0].device:
        raise ValueError(
            f"all inputs must be on one device: student mu is on {student[0].device} "
            f"but teacher mu is on {teacher[0].device}"
        )
    points = check_points(z, batch, dim, teacher[0].device)
    check_cd_weights(omega, row_weights, batch, points, teacher[0].device)
    if validate:
        check_mixture_values(*teacher, role="teacher")
        check_mixture_values(*student, role="student")
        check_finite({"z": z, "omega": omega, "row_weights": row_weights})
    if backend == "torch":
        return consistency_distillation_reference(z, teacher, student, omega, row_weights)
    compute_grads = torch.is_grad_enabled() and any(t.requires_grad for t in student)
    per_row, _ = torch.ops.casd.consistency_distillation(
        z.detach(), *(t.detach() for t in teacher), *student, omega.detach(), row_weights.detach(),
        compute_grads, *_DEFAULT_TILES,
    )
    return per_row.mean(), per_row
