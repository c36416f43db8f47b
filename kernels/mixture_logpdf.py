"""Fused ``mixture_logpdf``: log p(z) of a Student-t mixture (formulation §3, §5.1), Triton forward + backward.

    log p(z_p) = logsumexp_k(L_k + log_kernel_k(z_p)),   L_k = log pi_k + C_k,
    log_kernel_k(z) = -(nu_k + D)/2 * log1p(m_k(z) / nu_k),   m_k(z) = sum_j ((z_j - mu_kj) / sigma_kj)^2.

The host computes the O(B*K) coefficients L_k in float64 with PyTorch (lgamma has no
Triton op), so their gradients (digamma and friends) come from autograd. The kernels do
the O(B*P*K*D) work: one program holds a [BLOCK_R, BLOCK_P, BLOCK_D] register tile of
points (BLOCK_R rows, all of D; see ``launch.point_tile``) and loops over the K
components, so z is read once and nothing of size B*P*K*D exists anywhere. On a GPU
BLOCK_R is 1 unless rows are short; in the interpreter one program takes many rows,
because there the cost is per interpreted op. The forward keeps an online logsumexp over components; the
backward recomputes each component's responsibility r_k = exp(L_k + log_kernel_k - log p)
from the saved [B, P] result and returns, per formulation §5.1 with a_k = (nu_k + D)/(nu_k + m_k):

    d/dz_j    = -sum_k r_k a_k (z_j - mu_kj) / sigma_kj^2
    d/dmu_kj  =  r_k a_k (z_j - mu_kj) / sigma_kj^2
    d/ds_kj   =  r_k (a_k (z_j - mu_kj)^2 / sigma_kj^2 - 1)       (the whole of it, see below)
    d/dnu_k   =  r_k (a_k m_k / nu_k - log1p(m_k / nu_k)) / 2     (+ r_k dC_k/dnu_k via autograd)
                 [= r_k (-1/2 log q_k + (nu_k + D) m_k / (2 nu_k^2 q_k)), formulation's form]
    d/dL_k    =  r_k

C_k contains -sum_j s_kj; ``mixture_log_coefficients`` takes log_sigma detached, and the
kernel returns the complete d/ds (with its -r_k) so that autograd does not add it twice.

The per-component helpers (``_component``, ``_log1p``, ``_log_kernel``,
``_mixture_logpdf_tile``) and the backward kernel are shared with
``consistency_distillation``: the Student-t formula lives here only.

Precision: inputs may be float16, bfloat16, float32 or float64 (each loaded as it is);
the kernels compute in float32, or in float64 when any input is float64, and return the
result in that compute dtype (so float32 for every reduced-precision input). Gradients
come back in each input's own dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import host_math
from .launch import (
    AMP_DEVICE_TYPE,
    TileConfig,
    check_launch_inputs,
    default_tiles,
    launch_options,
    point_tile,
    use_fp64,
)

__all__ = ["mixture_logpdf_triton", "mixture_log_coefficients", "launch_mixture_backward"]

# fp32 tile elements per GPU thread. Measured by compiling for sm_90 (Triton 3.9, ptxas)
# at P = 28, D = 128: the forward needs 52 registers at 8 warps (four programs per SM),
# the backward 147, or 126 without spilling when capped for two programs per SM;
# at 4 warps (32 values per thread) the forward already needs 80.
VALUES_PER_THREAD = 16


# ----------------------------------------------------------------------------------------
# Shared @triton.jit helpers: the Student-t evaluation, written once.
# ----------------------------------------------------------------------------------------


@triton.jit
def _log1p(x):
    """log(1 + x) for x >= 0, accurate for tiny x without libdevice.

    Goldberg's trick: u = 1 + x is rounded, and log(u) * x / (u - 1) cancels that
    rounding error; where u rounds to exactly 1, log1p(x) = x to working precision.
    Needed at large nu, where m / nu can be far below the float32 epsilon.
    """
    u = 1.0 + x
    rounded_away = u - 1.0
    safe = tl.where(rounded_away == 0.0, 1.0, rounded_away)
    return tl.where(rounded_away == 0.0, x, tl.log(u) * (x / safe))


@triton.jit
def _x_minus_log1p(x):
    """x - log(1 + x) for x >= 0 without cancellation.

    Below x = 0.1 the subtraction would lose up to log10(2 / x) digits, so use the series
    x^2/2 - x^3/3 + ... - x^12/12 (truncation < 2e-12 relative at x = 0.1); above it the
    subtraction loses at most a factor 20.
    """
    small = tl.minimum(x, 0.1)  # the series branch never sees a large x (no overflow)
    series = 1.0 / 12.0
    series = 1.0 / 11.0 - small * series
    series = 1.0 / 10.0 - small * series
    series = 1.0 / 9.0 - small * series
    series = 1.0 / 8.0 - small * series
    series = 1.0 / 7.0 - small * series
    series = 1.0 / 6.0 - small * series
    series = 1.0 / 5.0 - small * series
    series = 1.0 / 4.0 - small * series
    series = 1.0 / 3.0 - small * series
    series = 1.0 / 2.0 - small * series
    return tl.where(x < 0.1, small * small * series, x - _log1p(x))


@triton.jit
def _log_kernel(log_q, nu, dim):
    """The z-dependent part of log t_k: -(nu + D)/2 * log q, q = 1 + m / nu (formulation §3)."""
    return -0.5 * (nu + dim) * log_q


@triton.jit
def _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE: tl.constexpr):
    """z[rows, offs_p, offs_d] as a [BLOCK_R, BLOCK_P, BLOCK_D] tile; padding reads 0."""
    ptrs = z_ptr + (rows[:, None, None] * P + offs_p[None, :, None]) * D + offs_d[None, None, :]
    mask = mask_r[:, None, None] & mask_p[None, :, None] & mask_d[None, None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def _component(
    z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_coef_ptr, k, rows, mask_r, offs_d, mask_d, K, D,
    COMPUTE: tl.constexpr,
):
    """Component k of every row in the tile.

    Returns the scaled residual (z - mu_k) / sigma_k [BLOCK_R, BLOCK_P, BLOCK_D],
    1 / sigma_k [BLOCK_R, BLOCK_D], m_k [BLOCK_R, BLOCK_P], and nu_k, L_k as [BLOCK_R, 1].
    Padded coordinates load mu = 0 against z = 0 and add exactly 0 to m_k; padded rows
    load nu = 1 so that nothing divides by zero.
    """
    params = (rows[:, None] * K + k) * D + offs_d[None, :]
    mask = mask_r[:, None] & mask_d[None, :]
    mu = tl.load(mu_ptr + params, mask=mask, other=0.0).to(COMPUTE)
    inv_sigma = tl.exp(-tl.load(log_sigma_ptr + params, mask=mask, other=0.0).to(COMPUTE))
    scaled = (z_tile - mu[:, None, :]) * inv_sigma[:, None, :]
    mahalanobis = tl.sum(scaled * scaled, axis=2)
    nu = tl.load(nu_ptr + rows * K + k, mask=mask_r, other=1.0).to(COMPUTE)
    log_coef = tl.load(log_coef_ptr + rows * K + k, mask=mask_r, other=0.0).to(COMPUTE)
    return scaled, inv_sigma, mahalanobis, nu[:, None], log_coef[:, None]


@triton.jit
def _mixture_logpdf_tile(
    z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_coef_ptr, rows, mask_r, offs_d, mask_d, K, D,
    COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """log p(z) [BLOCK_R, BLOCK_P] for a tile of points: online logsumexp over components.

    Absent components (L_k = -inf) contribute exp(-inf) = 0; the running maximum is
    replaced by 0 while it is still -inf so that no -inf - (-inf) = NaN appears.
    """
    running_max = tl.full([BLOCK_R, BLOCK_P], float("-inf"), COMPUTE)
    running_sum = tl.zeros([BLOCK_R, BLOCK_P], COMPUTE)
    for k in range(K):
        _, _, mahalanobis, nu, log_coef = _component(
            z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_coef_ptr, k, rows, mask_r, offs_d, mask_d,
            K, D, COMPUTE,
        )
        log_term = log_coef + _log_kernel(_log1p(mahalanobis / nu), nu, D)
        new_max = tl.maximum(running_max, log_term)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.exp(log_term - shift)
        running_max = new_max
    shift = tl.where(running_max == float("-inf"), 0.0, running_max)
    return shift + tl.log(running_sum)


# ----------------------------------------------------------------------------------------
# Kernels. Program (i, t) handles rows [i * BLOCK_R, (i + 1) * BLOCK_R) and point tile t.
# ----------------------------------------------------------------------------------------


@triton.jit
def _mixture_logpdf_forward_kernel(
    z_ptr,
    mu_ptr,
    log_sigma_ptr,
    nu_ptr,
    log_coef_ptr,
    out_ptr,
    B,
    P,
    K,
    D,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[rows, tile] = log p(z[rows, tile])."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r, mask_p, mask_d = rows < B, offs_p < P, offs_d < D
    z_tile = _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE)
    log_p = _mixture_logpdf_tile(
        z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_coef_ptr, rows, mask_r, offs_d, mask_d, K, D,
        COMPUTE, BLOCK_R, BLOCK_P,
    )
    out_offs = rows[:, None] * P + offs_p[None, :]
    tl.store(out_ptr + out_offs, log_p, mask=mask_r[:, None] & mask_p[None, :])


@triton.jit
def _mixture_logpdf_backward_kernel(
    grad_out_ptr,
    out_ptr,
    z_ptr,
    mu_ptr,
    log_sigma_ptr,
    nu_ptr,
    log_coef_ptr,
    grad_z_ptr,
    grad_mu_ptr,
    grad_log_sigma_ptr,
    grad_nu_ptr,
    grad_log_coef_ptr,
    B,
    P,
    K,
    D,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NEEDS_GRAD_Z: tl.constexpr,
):
    """Gradients of sum_p grad_out[b, p] * log p(z[b, p]) for the tile's rows and points.

    The [B, K(, D)] parameter gradients of point tile t go to slice t of
    [num_tiles, B, K(, D)] buffers (the gradient tensors themselves when there is one
    tile), summed on the host: no atomics, so the result is deterministic.
    """
    tile = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r, mask_p, mask_d = rows < B, offs_p < P, offs_d < D
    mask_rp = mask_r[:, None] & mask_p[None, :]
    mask_rd = mask_r[:, None] & mask_d[None, :]
    z_tile = _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE)
    point_offs = rows[:, None] * P + offs_p[None, :]
    grad_out = tl.load(grad_out_ptr + point_offs, mask=mask_rp, other=0.0).to(COMPUTE)
    log_p = tl.load(out_ptr + point_offs, mask=mask_rp, other=0.0).to(COMPUTE)
    grad_z = tl.zeros([BLOCK_R, BLOCK_P, BLOCK_D], COMPUTE)
    weight_offs = (tile * B + rows) * K  # [BLOCK_R] into the [num_tiles, B, K] buffers
    for k in range(K):
        scaled, inv_sigma, mahalanobis, nu, log_coef = _component(
            z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_coef_ptr, k, rows, mask_r, offs_d, mask_d,
            K, D, COMPUTE,
        )
        ratio = mahalanobis / nu
        log_q = _log1p(ratio)
        responsibility = tl.exp(log_coef + _log_kernel(log_q, nu, D) - log_p)
        # upstream gradient times responsibility; padded points carry exactly 0
        weight = tl.where(mask_rp, grad_out * responsibility, 0.0)
        a = (nu + D) / (nu + mahalanobis)
        coef = weight * a
        # r a (z - mu) / sigma^2: the common factor of d/dz and d/dmu
        pull = coef[:, :, None] * scaled * inv_sigma[:, None, :]
        if NEEDS_GRAD_Z:
            grad_z -= pull
        weight_sum = tl.sum(weight, axis=1)
        grad_mu = tl.sum(pull, axis=1)
        grad_log_sigma = tl.sum(coef[:, :, None] * scaled * scaled, axis=1) - weight_sum[:, None]
        # (a x - log1p x) / 2 with x = m / nu. For x < 1 (large nu) both parts are ~x and
        # nearly cancel, so use (x - log1p x) + x (a - 1) there; for large x that form
        # cancels instead (x against -x), so keep the plain one.
        q_small = _x_minus_log1p(ratio) + ratio * ((D - mahalanobis) / (nu + mahalanobis))
        q_term = tl.where(ratio < 1.0, q_small, a * ratio - log_q)
        grad_nu = 0.5 * tl.sum(weight * q_term, axis=1)
        param_offs = (weight_offs[:, None] + k) * D + offs_d[None, :]
        tl.store(grad_mu_ptr + param_offs, grad_mu, mask=mask_rd)
        tl.store(grad_log_sigma_ptr + param_offs, grad_log_sigma, mask=mask_rd)
        tl.store(grad_nu_ptr + weight_offs + k, grad_nu, mask=mask_r)
        tl.store(grad_log_coef_ptr + weight_offs + k, weight_sum, mask=mask_r)
    if NEEDS_GRAD_Z:
        ptrs = grad_z_ptr + point_offs[:, :, None] * D + offs_d[None, None, :]
        tl.store(ptrs, grad_z, mask=mask_rp[:, :, None] & mask_d[None, None, :])


# ----------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------


def _compute_dtypes(fp64: bool) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if fp64 else (torch.float32, tl.float32)


def mixture_log_coefficients(
    log_pi: torch.Tensor, nu: torch.Tensor, log_sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(nu, L): nu as the kernels take it and L_k = log pi_k + C_k [B, K] in float64.

    L is float64 because C_k is a difference of two lgamma values that grow like
    nu log nu: at nu = 1e4 float32 would lose about 1e-3 absolutely. It is differentiable
    in log_pi and nu; log_sigma enters detached, as the backward kernel returns all of
    d/ds including the -1 from C_k.

    nu is raised to at least float32 once, here, and used for both paths: its gradient
    is the kernel's q-term plus autograd's r dC/dnu, two terms that nearly cancel, so
    they must be added before the result is rounded to a float16/bfloat16 nu.
    """
    if nu.dtype in (torch.float16, torch.bfloat16):
        nu = nu.float()
    sigma_part = log_sigma.detach()
    if sigma_part.dtype in (torch.float16, torch.bfloat16):
        sigma_part = sigma_part.float()  # sum D values at fp32 precision, not fp16
    return nu, log_pi.double() + host_math.log_normaliser(nu.double(), sigma_part)


def launch_mixture_backward(
    grad_out: torch.Tensor,
    log_p: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    nu: torch.Tensor,
    log_coef: torch.Tensor,
    *,
    needs_grad_z: bool,
    fp64: bool,
    tiles: TileConfig,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad_out * log p) for (z, mu, log_sigma, nu, log_coef).

    All tensors contiguous; grad_out and log_p are [B, P]. Each gradient has its input's
    dtype; grad z is None unless ``needs_grad_z``.
    """
    batch, points, dim = z.shape
    components = mu.shape[1]
    block_r, block_p, block_d = point_tile(batch, points, dim, tiles)
    num_tiles = triton.cdiv(points, block_p)
    acc_dtype, compute = _compute_dtypes(fp64)

    def param_buffer(like: torch.Tensor) -> torch.Tensor:
        # One tile: write straight into the gradient. Several: per-tile partials, summed below.
        if num_tiles == 1:
            return torch.empty_like(like).unsqueeze(0)
        return torch.empty((num_tiles, *like.shape), dtype=acc_dtype, device=like.device)

    grad_mu, grad_log_sigma = param_buffer(mu), param_buffer(log_sigma)
    grad_nu, grad_log_coef = param_buffer(nu), param_buffer(log_coef)
    grad_z = torch.empty_like(z) if needs_grad_z else None
    _mixture_logpdf_backward_kernel[(triton.cdiv(batch, block_r), num_tiles)](
        grad_out,
        log_p,
        z,
        mu,
        log_sigma,
        nu,
        log_coef,
        grad_z if needs_grad_z else z,  # never written when not needed
        grad_mu,
        grad_log_sigma,
        grad_nu,
        grad_log_coef,
        batch,
        points,
        components,
        dim,
        COMPUTE=compute,
        BLOCK_R=block_r,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        NEEDS_GRAD_Z=needs_grad_z,
        **launch_options(block_r * block_p * block_d, VALUES_PER_THREAD, two_programs_per_sm=True),
    )
    grads = []
    for buffer, like in ((grad_mu, mu), (grad_log_sigma, log_sigma), (grad_nu, nu), (grad_log_coef, log_coef)):
        grads.append(buffer[0] if num_tiles == 1 else buffer.sum(0).to(like.dtype))
    return (grad_z, *grads)


class MixtureLogPdfFunction(torch.autograd.Function):
    """log p(z) from (z, mu, log_sigma, nu, L = log pi + C); saves only inputs and the [B, P] result."""

    @staticmethod
    @torch.amp.custom_fwd(device_type=AMP_DEVICE_TYPE)
    def forward(ctx, z, mu, log_sigma, nu, log_coef, fp64: bool, tiles: TileConfig):
        z, mu, log_sigma, nu, log_coef = (
            t.contiguous() for t in (z, mu, log_sigma, nu, log_coef)
        )
        batch, points, dim = z.shape
        out_dtype, compute = _compute_dtypes(fp64)
        block_r, block_p, block_d = point_tile(batch, points, dim, tiles)
        log_p = torch.empty((batch, points), dtype=out_dtype, device=z.device)
        grid = (triton.cdiv(batch, block_r), triton.cdiv(points, block_p))
        _mixture_logpdf_forward_kernel[grid](
            z,
            mu,
            log_sigma,
            nu,
            log_coef,
            log_p,
            batch,
            points,
            mu.shape[1],
            dim,
            COMPUTE=compute,
            BLOCK_R=block_r,
            BLOCK_P=block_p,
            BLOCK_D=block_d,
            **launch_options(block_r * block_p * block_d, VALUES_PER_THREAD),
        )
        ctx.save_for_backward(z, mu, log_sigma, nu, log_coef, log_p)
        ctx.fp64, ctx.tiles = fp64, tiles
        return log_p

    @staticmethod
    @torch.amp.custom_bwd(device_type=AMP_DEVICE_TYPE)
    def backward(ctx, grad_log_p):
        z, mu, log_sigma, nu, log_coef, log_p = ctx.saved_tensors
        grads = launch_mixture_backward(
            grad_log_p.contiguous(),
            log_p,
            z,
            mu,
            log_sigma,
            nu,
            log_coef,
            needs_grad_z=ctx.needs_input_grad[0],
            fp64=ctx.fp64,
            tiles=ctx.tiles,
        )
        grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)]
        return (*grads, None, None)


def mixture_logpdf_triton(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    nu: torch.Tensor,
    log_pi: torch.Tensor,
    *,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """log p(z) [B, P] of the mixture; differentiable in all five inputs.

    Inputs must already be validated (``ops.mixture_logpdf`` does it). Non-contiguous
    inputs are copied to contiguous ones. ``tiles`` overrides the per-device tile budget
    (tests use it to force several point tiles per row).
    """
    check_launch_inputs({"z": z, "mu": mu, "log_sigma": log_sigma, "nu": nu, "log_pi": log_pi})
    fp64 = use_fp64(z, mu, log_sigma, nu, log_pi)
    nu, log_coef = mixture_log_coefficients(log_pi, nu, log_sigma)
    return MixtureLogPdfFunction.apply(
        z, mu, log_sigma, nu, log_coef, fp64, tiles or default_tiles()
    )
