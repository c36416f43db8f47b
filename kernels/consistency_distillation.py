"""Fused ``consistency_distillation`` (formulation §4, §5.3), Triton forward + backward.

    per_row[b] = w_b * sum_p omega_bp * (log p_T(z_bp) - log p_S(z_bp)),   L_cd = mean_b per_row[b]

The forward kernel loads each [BLOCK_P, BLOCK_D] tile of teacher samples once and runs the
shared mixture evaluation (``mixture_logpdf._mixture_logpdf_tile``) for the teacher and
for the student on it; each program writes one partial sum per (point tile, row), which
the host adds up in a fixed order (no atomics: deterministic). It also writes
log p_S [B, P] for the backward.

Gradients reach the student only. d per_row[b] / d log p_S(z_bp) = -w_b omega_bp, so the
backward is exactly the mixture_logpdf backward kernel with upstream gradient
G[b, p] = -grad_per_row[b] * w_b * omega_bp and no gradient for z.

Precision and dtypes as in ``mixture_logpdf``: float32 compute (float64 if any input is
float64), per-row terms and loss returned in that dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import (
    AMP_DEVICE_TYPE,
    TileConfig,
    check_launch_inputs,
    default_tiles,
    launch_options,
    point_tile,
    use_fp64,
)
from .mixture_logpdf import (
    VALUES_PER_THREAD,
    _load_point_tile,
    _mixture_logpdf_tile,
    launch_mixture_backward,
    mixture_log_coefficients,
)

__all__ = ["consistency_distillation_triton"]

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@triton.jit
def _consistency_forward_kernel(
    z_ptr,
    teacher_mu_ptr,
    teacher_log_sigma_ptr,
    teacher_nu_ptr,
    teacher_log_coef_ptr,
    student_mu_ptr,
    student_log_sigma_ptr,
    student_nu_ptr,
    student_log_coef_ptr,
    omega_ptr,
    row_weight_ptr,
    log_p_student_ptr,
    partial_ptr,
    B,
    P,
    K,
    D,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (i, t): partial[t, b] = w_b sum_{p in tile t} omega_bp (log p_T - log p_S)."""
    tile = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r, mask_p, mask_d = rows < B, offs_p < P, offs_d < D
    mask_rp = mask_r[:, None] & mask_p[None, :]
    z_tile = _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE)
    log_p_teacher = _mixture_logpdf_tile(
        z_tile, teacher_mu_ptr, teacher_log_sigma_ptr, teacher_nu_ptr, teacher_log_coef_ptr,
        rows, mask_r, offs_d, mask_d, K, D, COMPUTE, BLOCK_R, BLOCK_P,
    )
    log_p_student = _mixture_logpdf_tile(
        z_tile, student_mu_ptr, student_log_sigma_ptr, student_nu_ptr, student_log_coef_ptr,
        rows, mask_r, offs_d, mask_d, K, D, COMPUTE, BLOCK_R, BLOCK_P,
    )
    point_offs = rows[:, None] * P + offs_p[None, :]
    tl.store(log_p_student_ptr + point_offs, log_p_student, mask=mask_rp)
    omega = tl.load(omega_ptr + point_offs, mask=mask_rp, other=0.0).to(COMPUTE)
    gap = tl.where(mask_rp, omega * (log_p_teacher - log_p_student), 0.0)
    row_weight = tl.load(row_weight_ptr + rows, mask=mask_r, other=0.0).to(COMPUTE)
    tl.store(partial_ptr + tile * B + rows, row_weight * tl.sum(gap, axis=1), mask=mask_r)


class ConsistencyDistillationFunction(torch.autograd.Function):
    """per_row [B] from z, the teacher's and the student's (mu, log_sigma, nu, L), omega, w.

    Saves z, the student's parameters, omega, w and log p_S [B, P]; the teacher is not needed
    again. Gradients: the student's mu, log_sigma, nu and L only.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type=AMP_DEVICE_TYPE)
    def forward(ctx, z, t_mu, t_log_sigma, t_nu, t_log_coef, s_mu, s_log_sigma, s_nu, s_log_coef,
                omega, w, fp64: bool, tiles: TileConfig):
        (z, t_mu, t_log_sigma, t_nu, t_log_coef, s_mu, s_log_sigma, s_nu, s_log_coef, omega, w) = (
            t.contiguous()
            for t in (z, t_mu, t_log_sigma, t_nu, t_log_coef, s_mu, s_log_sigma, s_nu, s_log_coef, omega, w)
        )
        batch, points, dim = z.shape
        out_dtype = torch.float64 if fp64 else torch.float32
        block_r, block_p, block_d = point_tile(batch, points, dim, tiles)
        num_tiles = triton.cdiv(points, block_p)
        log_p_student = torch.empty((batch, points), dtype=out_dtype, device=z.device)
        partial = torch.empty((num_tiles, batch), dtype=out_dtype, device=z.device)
        _consistency_forward_kernel[(triton.cdiv(batch, block_r), num_tiles)](
            z,
            t_mu,
            t_log_sigma,
            t_nu,
            t_log_coef,
            s_mu,
            s_log_sigma,
            s_nu,
            s_log_coef,
            omega,
            w,
            log_p_student,
            partial,
            batch,
            points,
            t_mu.shape[1],
            dim,
            COMPUTE=tl.float64 if fp64 else tl.float32,
            BLOCK_R=block_r,
            BLOCK_P=block_p,
            BLOCK_D=block_d,
            # two mixtures per tile: 79 registers at P = 28, D = 128, 8 warps (sm_90)
            **launch_options(block_r * block_p * block_d, VALUES_PER_THREAD),
        )
        per_row = partial[0] if num_tiles == 1 else partial.sum(0)
        ctx.save_for_backward(z, s_mu, s_log_sigma, s_nu, s_log_coef, omega, w, log_p_student)
        ctx.fp64, ctx.tiles = fp64, tiles
        return per_row

    @staticmethod
    @torch.amp.custom_bwd(device_type=AMP_DEVICE_TYPE)
    def backward(ctx, grad_per_row):
        z, s_mu, s_log_sigma, s_nu, s_log_coef, omega, w, log_p_student = ctx.saved_tensors
        # d per_row[b] / d log p_S(z_bp) = -w_b omega_bp
        grad_log_p = -(grad_per_row.to(log_p_student.dtype) * w)[:, None] * omega
        _, grad_mu, grad_log_sigma, grad_nu, grad_log_coef = launch_mixture_backward(
            grad_log_p.to(log_p_student.dtype).contiguous(),
            log_p_student,
            z,
            s_mu,
            s_log_sigma,
            s_nu,
            s_log_coef,
            needs_grad_z=False,
            fp64=ctx.fp64,
            tiles=ctx.tiles,
        )
        return (None,) * 5 + (grad_mu, grad_log_sigma, grad_nu, grad_log_coef) + (None,) * 4


def consistency_distillation_triton(
    z: torch.Tensor,
    teacher: Mixture,
    student: Mixture,
    omega: torch.Tensor,
    w: torch.Tensor,
    *,
    tiles: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_cd, per_row [B]) with L_cd = per_row.mean(); gradients to the student only.

    Inputs must already be validated (``ops.consistency_distillation`` does it). The
    teacher, z, omega and w are detached here, as in the reference.
    """
    names = ("mu", "log_sigma", "nu", "log_pi")
    check_launch_inputs(
        {"z": z, **{f"teacher {n}": t for n, t in zip(names, teacher)},
         **{f"student {n}": t for n, t in zip(names, student)}, "omega": omega, "w": w}
    )
    t_mu, t_log_sigma, t_nu, t_log_pi = (t.detach() for t in teacher)
    s_mu, s_log_sigma, s_nu, s_log_pi = student
    fp64 = use_fp64(z, *teacher, *student, omega, w)
    with torch.no_grad():
        t_nu, t_log_coef = mixture_log_coefficients(t_log_pi, t_nu, t_log_sigma)
    s_nu, s_log_coef = mixture_log_coefficients(s_log_pi, s_nu, s_log_sigma)
    per_row = ConsistencyDistillationFunction.apply(
        z.detach(), t_mu, t_log_sigma, t_nu, t_log_coef,
        s_mu, s_log_sigma, s_nu, s_log_coef,
        omega.detach(), w.detach(), fp64, tiles or default_tiles(),
    )
    return per_row.mean(), per_row
