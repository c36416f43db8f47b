"""Fused ``consistency_distillation`` (formulation §4, §5.3): one Triton launch, gradients included.

    per_row[b] = w_b * sum_p omega_bp * (log p_T(z_bp) - log p_S(z_bp)),   L_cd = mean_b per_row[b]

The kernel loads each [BLOCK_P, BLOCK_D] tile of teacher samples once and runs the shared
mixture evaluation (``mixture_logpdf._mixture_logpdf_tile``) for the teacher and for the
student on it; each program writes one partial sum per (point tile, row), which are added
up in a fixed order when a row spans several tiles (no atomics: deterministic).

Gradients reach the student only, and per_row[b] depends on row b's student parameters
only: d per_row[b] / d log p_S(z_bp) = -w_b omega_bp. So while z is in registers, the same
program also runs the mixture backward (``mixture_logpdf._mixture_gradients``) with that
upstream gradient and stores d per_row[b] / d theta_b for the student's mu, log_sigma, nu
and log pi of its rows, packed per (b, k) as [D | D | 1 | 1 | padding to a multiple of 16]
([B, K, packed_width(D)]). The backward
of the operation is then one multiplication, grad_per_row[b] * row_grads[b]: no second pass
over z, nothing saved but the packed gradients (the size of the student's parameters).
When no gradient is needed (evaluation, ``torch.no_grad``) that part is compiled out.

Precision and dtypes as in ``mixture_logpdf``: float32 compute (float64 if any input is
float64), per-row terms and packed gradients in that dtype.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .launch import TileConfig, compute_dtypes, point_tile, use_fp64
from .mixture_logpdf import (
    BACKWARD_WARPS,
    FORWARD_WARPS,
    GradientLayout,
    _load_point_tile,
    _mixture_gradients,
    _mixture_logpdf_tile,
)
from ..packing import packed_width

__all__ = ["consistency_distillation_forward"]


@triton.jit
def _consistency_forward_kernel(
    z_ptr,
    teacher_mu_ptr,
    teacher_log_sigma_ptr,
    teacher_nu_ptr,
    teacher_log_pi_ptr,
    student_mu_ptr,
    student_log_sigma_ptr,
    student_nu_ptr,
    student_log_pi_ptr,
    omega_ptr,
    row_weight_ptr,
    partial_ptr,
    grad_mu_ptr,
    grad_log_sigma_ptr,
    grad_nu_ptr,
    grad_log_pi_ptr,
    B,
    P,
    K,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GRAD_WIDTH: tl.constexpr,
    COMPUTE_GRADS: tl.constexpr,
):
    """Program (i, t): partial[t, b] = w_b sum_{p in tile t} omega_bp (log p_T - log p_S), and
    with COMPUTE_GRADS its gradient in the student's parameters of row b (tile t's share)."""
    tile = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r, mask_p, mask_d = rows < B, offs_p < P, offs_d < D
    mask_rp = mask_r[:, None] & mask_p[None, :]
    z_tile = _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE)
    log_p_teacher = _mixture_logpdf_tile(
        z_tile, teacher_mu_ptr, teacher_log_sigma_ptr, teacher_nu_ptr, teacher_log_pi_ptr,
        rows, mask_r, offs_d, mask_d, K, D, COMPUTE, BLOCK_R, BLOCK_P, BLOCK_K,
    )
    log_p_student = _mixture_logpdf_tile(
        z_tile, student_mu_ptr, student_log_sigma_ptr, student_nu_ptr, student_log_pi_ptr,
        rows, mask_r, offs_d, mask_d, K, D, COMPUTE, BLOCK_R, BLOCK_P, BLOCK_K,
    )
    point_offs = rows[:, None] * P + offs_p[None, :]
    omega = tl.load(omega_ptr + point_offs, mask=mask_rp, other=0.0).to(COMPUTE)
    row_weight = tl.load(row_weight_ptr + rows, mask=mask_r, other=0.0).to(COMPUTE)
    gap = tl.where(mask_rp, omega * (log_p_teacher - log_p_student), 0.0)
    tl.store(partial_ptr + tile * B + rows, row_weight * tl.sum(gap, axis=1), mask=mask_r)
    if COMPUTE_GRADS:
        _mixture_gradients(
            z_tile, -row_weight[:, None] * omega, log_p_student,
            student_mu_ptr, student_log_sigma_ptr, student_nu_ptr, student_log_pi_ptr,
            grad_mu_ptr, grad_log_sigma_ptr, grad_nu_ptr, grad_log_pi_ptr, (tile * B + rows) * K,
            rows, mask_r, mask_rp, offs_d, mask_d, K, D, COMPUTE, BLOCK_R, BLOCK_P, BLOCK_D, BLOCK_K,
            GRAD_WIDTH, GRAD_WIDTH, False,
        )
        # the packed rows' padding is written too (zeros): the output is fully defined
        offs_k = tl.arange(0, BLOCK_K)
        offs_pad = 2 * D + 2 + tl.arange(0, 16)
        pad = ((tile * B + rows)[:, None, None] * K + offs_k[None, :, None]) * GRAD_WIDTH + offs_pad[None, None, :]
        mask_pad = mask_r[:, None, None] & (offs_k < K)[None, :, None] & (offs_pad < GRAD_WIDTH)[None, None, :]
        tl.store(grad_mu_ptr + pad, tl.zeros([BLOCK_R, BLOCK_K, 16], COMPUTE), mask=mask_pad)


def consistency_distillation_forward(
    z: torch.Tensor,
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor],
    omega: torch.Tensor,
    row_weights: torch.Tensor,
    *,
    compute_grads: bool,
    tiles: TileConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per_row [B], row_grads) in the compute dtype, for ``teacher`` and ``student`` given as
    (mu, log_sigma, nu, log_pi): one launch (plus one ``sum`` per output
    when a row's points span several tiles).

    row_grads [B, K, packed_width(D)] are d per_row[b] / d (student mu, log_sigma, nu, log pi)[b],
    packed per (b, k) as [D | D | 1 | 1 | padding]; an empty [0] tensor unless ``compute_grads``.
    """
    z, omega, row_weights = z.contiguous(), omega.contiguous(), row_weights.contiguous()
    teacher = [t.contiguous() for t in teacher]
    student = [t.contiguous() for t in student]
    batch, points, dim = z.shape
    components = teacher[0].shape[1]
    out_dtype, compute = compute_dtypes(use_fp64(z, *teacher, *student, omega, row_weights))
    block_r, block_p, block_d = point_tile(batch, points, dim, tiles)
    num_tiles = triton.cdiv(points, block_p)
    partial = torch.empty((num_tiles, batch), dtype=out_dtype, device=z.device)
    width = packed_width(dim)
    if compute_grads:
        packed = torch.empty((num_tiles, batch, components, width), dtype=out_dtype, device=z.device)
        grad_args = GradientLayout.packed(packed, dim).kernel_args()
    else:
        packed = torch.empty((0,), dtype=out_dtype, device=z.device)
        grad_args = (partial,) * 4  # never written
    _consistency_forward_kernel[(triton.cdiv(batch, block_r), num_tiles)](
        z, *teacher, *student, omega, row_weights, partial, *grad_args,
        batch, points, components,
        D=dim, COMPUTE=compute, BLOCK_R=block_r, BLOCK_P=block_p, BLOCK_D=block_d,
        BLOCK_K=triton.next_power_of_2(components), GRAD_WIDTH=width, COMPUTE_GRADS=compute_grads,
        # with its gradient pass the kernel holds what the mixture backward holds
        **(BACKWARD_WARPS if compute_grads else FORWARD_WARPS).options(block_r * block_p * block_d).kwargs(),
    )
    if num_tiles == 1:
        return partial.view(batch), packed.view(packed.shape[1:]) if compute_grads else packed
    return partial.sum(0), packed.sum(0) if compute_grads else packed
