"""Fused ``mixture_logpdf``: log p(z) of a Student-t mixture (formulation §3, §5.1), Triton forward + backward.

    log p(z_p) = logsumexp_k(L_k + log_kernel_k(z_p)),   L_k = log pi_k + C_k,   C_k = c(nu_k) - sum_j s_kj,
    log_kernel_k(z) = -(nu_k + D)/2 * log1p(m_k(z) / nu_k),   m_k(z) = sum_j ((z_j - mu_kj) / sigma_kj)^2,

with s = log sigma and c(nu) = lgamma((nu + D)/2) - lgamma(nu/2) - D/2 log(nu pi) (``special``).

One launch each way, and nothing else: the O(B*K) coefficients L_k and their derivatives
are computed inside the kernels (``special`` writes lgamma and digamma differences in
plain ``tl`` ops), so no host-side PyTorch op surrounds the launch. One program holds a
[BLOCK_R, BLOCK_P, BLOCK_D] register tile of points (BLOCK_R rows, all of D; see
``launch.point_tile``) and loops over the K components, so z is read once and nothing of
size B*P*K*D exists anywhere. On a GPU BLOCK_R is 1 unless rows are short; in the
interpreter one program takes many rows, because there the cost is per interpreted op.
D is a compile-time constant, like HEAD_DIM in Triton's attention tutorial: one compiled
variant per embedding width, in exchange for aligned, vectorised loads whatever D is (a
runtime D that is not a multiple of 16 cost 40% more registers and spilled at D = 100).

The forward keeps an online logsumexp over components. The backward recomputes each
component's responsibility r_k = exp(L_k + log_kernel_k - log p) from the saved [B, P]
result and returns, per formulation §5.1 with a_k = (nu_k + D)/(nu_k + m_k):

    d/dz_j    = -sum_k r_k a_k (z_j - mu_kj) / sigma_kj^2
    d/dmu_kj  =  r_k a_k (z_j - mu_kj) / sigma_kj^2
    d/ds_kj   =  r_k (a_k (z_j - mu_kj)^2 / sigma_kj^2 - 1)             (the -1 is dC_k/ds_kj)
    d/dnu_k   =  r_k ((a_k m_k / nu_k - log1p(m_k / nu_k)) / 2 + c'(nu_k))
                 [= r_k (-1/2 log q_k + (nu_k + D) m_k / (2 nu_k^2 q_k) + c'), formulation's form]
    d/dlog pi_k = r_k

each summed over the points of a row. At large nu the two parts of d/dnu nearly cancel
(both are O(D^2/nu^2)); each is computed without cancellation (``_x_minus_log1p``,
``special._student_t_normaliser_dnu``) and they are added in the compute dtype, before
anything is rounded to a reduced-precision nu.

Edge cases, all without NaN: an absent component (log pi = -inf) contributes exp(-inf) = 0
and gets exactly zero gradients; a point that no component reaches (log p = -inf: every
component absent, or m overflowing float32 in the far tails) has log p = -inf and
contributes zero gradients.

The per-component helpers (``_component``, ``_log_kernel``, ``_mixture_logpdf_tile``) and
the gradient loop (``_mixture_gradients``) are shared with ``consistency_distillation``: the
Student-t formula lives here only.

Precision: inputs may be float16, bfloat16, float32 or float64 (each loaded as it is);
the kernels compute in float32, or in float64 when any input is float64, and return the
result in that compute dtype (so float32 for every reduced-precision input). Gradients
come back in each input's own dtype.

Determinism: a row's points may span several point tiles (P * D beyond the tile budget);
then each tile writes its own slice of [tiles, B, K(, D)] buffers of partial parameter
gradients, reduced in a fixed order by one ``sum`` each (no atomics). With one tile
(P = 28 up to D = 256 on a GPU, every test shape in the interpreter) the kernel writes the
gradients directly and the backward is one launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..packing import unpack_gradients
from .launch import (
    TileConfig,
    WarpPolicy,
    compute_dtypes,
    point_tile,
    use_fp64,
)
from .special import _log1p, _student_t_normaliser, _student_t_normaliser_dnu, _x_minus_log1p

__all__ = [
    "mixture_logpdf_forward",
    "mixture_logpdf_backward",
    "GradientLayout",
    "FORWARD_WARPS",
    "BACKWARD_WARPS",
]

# Warps per program, from the registers each kernel needs (sm_90, B = 4096, K = 7, P = 28,
# Triton 3.6 and 3.9, ``python -m benchmarks.compile_kernels``; tables in docs/performance.md).
# The forward holds 16 tile elements per thread (8 warps from D = 96): 59-80 registers; the
# explicit cap of 128 (two programs per SM) matters, because without it Triton 3.6's ptxas
# settles at 80 registers and spills 8 bytes at D = 100 and 120. The backward also keeps
# d/dz and the scaled residuals live: at 16 per thread it needs ~150 registers and spills
# under a 128 cap, so it holds 8 per thread (16 warps from D = 96: 102-128 registers); at
# D = 256 that would take 32 warps, and 16 warps (128 registers at most) spill under 3.6,
# so it runs 8 warps with up to 255 registers (203-255 measured), one program per SM.
FORWARD_WARPS = WarpPolicy(values_per_thread=16, two_programs_per_sm=True)
BACKWARD_WARPS = WarpPolicy(values_per_thread=8, two_programs_per_sm=True, crowded_warps=8)


# ----------------------------------------------------------------------------------------
# Shared @triton.jit helpers: the Student-t evaluation, written once.
# ----------------------------------------------------------------------------------------


@triton.jit
def _log_kernel(log_q, nu, dim):
    """The z-dependent part of log t_k: -(nu + D)/2 * log q, q = 1 + m / nu (formulation §3)."""
    return -0.5 * (nu + dim) * log_q


@triton.jit
def _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D: tl.constexpr, COMPUTE: tl.constexpr):
    """z[rows, offs_p, offs_d] as a [BLOCK_R, BLOCK_P, BLOCK_D] tile; padding reads 0."""
    ptrs = z_ptr + (rows[:, None, None] * P + offs_p[None, :, None]) * D + offs_d[None, None, :]
    mask = mask_r[:, None, None] & mask_p[None, :, None] & mask_d[None, None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def _coefficients(nu_ptr, log_pi_ptr, rows, mask_r, K, D: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_K: tl.constexpr):
    """nu and log pi + c(nu) of every component of the tile's rows, [BLOCK_R, BLOCK_K].

    Computed once per program for all K components together, before the loop over
    components: in a [BLOCK_R, BLOCK_K] tile the threads share the special-function work,
    where per component every thread would repeat it. Padding loads nu = 1, log pi = 0.
    """
    offs_k = tl.arange(0, BLOCK_K)
    offs = rows[:, None] * K + offs_k[None, :]
    mask = mask_r[:, None] & (offs_k < K)[None, :]
    nu = tl.load(nu_ptr + offs, mask=mask, other=1.0).to(COMPUTE)
    log_pi = tl.load(log_pi_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    return nu, log_pi + _student_t_normaliser(nu, D)


@triton.jit
def _component(
    z_tile, mu_ptr, log_sigma_ptr, nu_all, coef_all, k, rows, mask_r, offs_d, mask_d, K, D: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Component k of every row in the tile.

    Returns the scaled residual (z - mu_k) / sigma_k [BLOCK_R, BLOCK_P, BLOCK_D],
    1 / sigma_k [BLOCK_R, BLOCK_D], m_k [BLOCK_R, BLOCK_P], and nu_k and
    L_k = log pi_k + c(nu_k) - sum_j s_kj as [BLOCK_R]. Padded coordinates load mu = s = 0
    against z = 0 and add exactly 0 to m_k and to sum_j s_kj.
    """
    params = (rows[:, None] * K + k) * D + offs_d[None, :]
    mask = mask_r[:, None] & mask_d[None, :]
    mu = tl.load(mu_ptr + params, mask=mask, other=0.0).to(COMPUTE)
    log_sigma = tl.load(log_sigma_ptr + params, mask=mask, other=0.0).to(COMPUTE)
    inv_sigma = tl.exp(-log_sigma)
    scaled = (z_tile - mu[:, None, :]) * inv_sigma[:, None, :]
    mahalanobis = tl.sum(scaled * scaled, axis=2)
    # column k of the [BLOCK_R, BLOCK_K] coefficient tiles (-inf passes through unchanged)
    pick = tl.arange(0, BLOCK_K)[None, :] == k
    nu = tl.sum(tl.where(pick, nu_all, 0.0), axis=1)
    log_coef = tl.sum(tl.where(pick, coef_all, 0.0), axis=1) - tl.sum(log_sigma, axis=1)
    return scaled, inv_sigma, mahalanobis, nu, log_coef


@triton.jit
def _mixture_logpdf_tile(
    z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_pi_ptr, rows, mask_r, offs_d, mask_d, K, D: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """log p(z) [BLOCK_R, BLOCK_P] for a tile of points: online logsumexp over components.

    Absent components (L_k = -inf) contribute exp(-inf) = 0; the running maximum is
    replaced by 0 while it is still -inf so that no -inf - (-inf) = NaN appears, whichever
    component comes first.
    """
    nu_all, coef_all = _coefficients(nu_ptr, log_pi_ptr, rows, mask_r, K, D, COMPUTE, BLOCK_K)
    running_max = tl.full([BLOCK_R, BLOCK_P], float("-inf"), COMPUTE)
    running_sum = tl.zeros([BLOCK_R, BLOCK_P], COMPUTE)
    for k in range(K):
        _, _, mahalanobis, nu, log_coef = _component(
            z_tile, mu_ptr, log_sigma_ptr, nu_all, coef_all, k, rows, mask_r, offs_d, mask_d,
            K, D, COMPUTE, BLOCK_K,
        )
        log_term = log_coef[:, None] + _log_kernel(_log1p(mahalanobis / nu[:, None]), nu[:, None], D)
        new_max = tl.maximum(running_max, log_term)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.exp(log_term - shift)
        running_max = new_max
    shift = tl.where(running_max == float("-inf"), 0.0, running_max)
    return shift + tl.log(running_sum)


@triton.jit
def _mixture_gradients(
    z_tile, upstream, log_p, mu_ptr, log_sigma_ptr, nu_ptr, log_pi_ptr,
    grad_mu_ptr, grad_log_sigma_ptr, grad_nu_ptr, grad_log_pi_ptr, grad_rows,
    rows, mask_r, mask_rp, offs_d, mask_d, K, D: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, VECTOR_WIDTH: tl.constexpr, SCALAR_WIDTH: tl.constexpr, NEEDS_GRAD_Z: tl.constexpr,
):
    """Gradients of sum_p upstream[r, p] * log p(z[r, p]) for the tile's rows and points.

    Writes d/dmu, d/ds of (row r, component k) at ``(grad_rows[r] + k) * VECTOR_WIDTH + j``
    and d/dnu, d/dlog pi at ``(grad_rows[r] + k) * SCALAR_WIDTH`` (``GradientLayout``: its
    own gradient tensors, per-tile partials, or a packed buffer); returns d/dz
    [BLOCK_R, BLOCK_P, BLOCK_D] (zeros unless NEEDS_GRAD_Z). The per-component d/dnu and
    d/dlog pi are collected in [BLOCK_R, BLOCK_K] tiles and stored once, after the loop.
    """
    mask_rd = mask_r[:, None] & mask_d[None, :]
    offs_k = tl.arange(0, BLOCK_K)
    nu_all, coef_all = _coefficients(nu_ptr, log_pi_ptr, rows, mask_r, K, D, COMPUTE, BLOCK_K)
    dcoef_all = _student_t_normaliser_dnu(nu_all, D)  # c'(nu) of every component
    grad_nu_all = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    grad_log_pi_all = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    reached = mask_rp & (log_p > float("-inf"))  # log p = -inf: no gradient to share out
    grad_z = tl.zeros([BLOCK_R, BLOCK_P, BLOCK_D], COMPUTE)
    for k in range(K):
        scaled, inv_sigma, mahalanobis, nu, log_coef = _component(
            z_tile, mu_ptr, log_sigma_ptr, nu_all, coef_all, k, rows, mask_r, offs_d, mask_d,
            K, D, COMPUTE, BLOCK_K,
        )
        nu_p = nu[:, None]
        ratio = mahalanobis / nu_p
        log_q = _log1p(ratio)
        responsibility = tl.exp(log_coef[:, None] + _log_kernel(log_q, nu_p, D) - log_p)
        # upstream gradient times responsibility; exactly 0 for padding and unreached points
        weight = tl.where(reached, upstream * responsibility, 0.0)
        a = (nu_p + D) / (nu_p + mahalanobis)
        coef = weight * a
        # r a (z - mu) / sigma: multiplied before the second factor, so that 0 * huge stays 0
        scaled_coef = coef[:, :, None] * scaled
        pull = scaled_coef * inv_sigma[:, None, :]  # r a (z - mu) / sigma^2: d/dmu, -d/dz
        if NEEDS_GRAD_Z:
            grad_z -= pull
        weight_sum = tl.sum(weight, axis=1)
        grad_mu = tl.sum(pull, axis=1)
        grad_log_sigma = tl.sum(scaled_coef * scaled, axis=1) - weight_sum[:, None]
        # (a x - log1p x) / 2 with x = m / nu. For x < 1 (large nu) both parts are ~x and
        # nearly cancel, so use (x - log1p x) + x (a - 1) there; for large x that form
        # cancels instead (x against -x), so keep the plain one.
        q_small = _x_minus_log1p(ratio) + ratio * ((D - mahalanobis) / (nu_p + mahalanobis))
        q_term = tl.where(ratio < 1.0, q_small, a * ratio - log_q)
        q_sum = tl.sum(tl.where(weight != 0.0, weight * q_term, 0.0), axis=1)
        pick = offs_k[None, :] == k
        grad_nu = 0.5 * q_sum + weight_sum * tl.sum(tl.where(pick, dcoef_all, 0.0), axis=1)
        vector = (grad_rows[:, None] + k) * VECTOR_WIDTH + offs_d[None, :]
        tl.store(grad_mu_ptr + vector, grad_mu, mask=mask_rd)
        tl.store(grad_log_sigma_ptr + vector, grad_log_sigma, mask=mask_rd)
        grad_nu_all = tl.where(pick, grad_nu[:, None], grad_nu_all)
        grad_log_pi_all = tl.where(pick, weight_sum[:, None], grad_log_pi_all)
    scalar = (grad_rows[:, None] + offs_k[None, :]) * SCALAR_WIDTH
    mask_rk = mask_r[:, None] & (offs_k < K)[None, :]
    tl.store(grad_nu_ptr + scalar, grad_nu_all, mask=mask_rk)
    tl.store(grad_log_pi_ptr + scalar, grad_log_pi_all, mask=mask_rk)
    return grad_z


# ----------------------------------------------------------------------------------------
# Kernels. Program (i, t) handles rows [i * BLOCK_R, (i + 1) * BLOCK_R) and point tile t.
# ----------------------------------------------------------------------------------------


@triton.jit
def _mixture_logpdf_forward_kernel(
    z_ptr,
    mu_ptr,
    log_sigma_ptr,
    nu_ptr,
    log_pi_ptr,
    out_ptr,
    B,
    P,
    K,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[rows, tile] = log p(z[rows, tile])."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r, mask_p, mask_d = rows < B, offs_p < P, offs_d < D
    z_tile = _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE)
    log_p = _mixture_logpdf_tile(
        z_tile, mu_ptr, log_sigma_ptr, nu_ptr, log_pi_ptr, rows, mask_r, offs_d, mask_d, K, D,
        COMPUTE, BLOCK_R, BLOCK_P, BLOCK_K,
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
    log_pi_ptr,
    grad_z_ptr,
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
    VECTOR_WIDTH: tl.constexpr,
    SCALAR_WIDTH: tl.constexpr,
    NEEDS_GRAD_Z: tl.constexpr,
):
    """Gradients of sum_p grad_out[b, p] * log p(z[b, p]) for the tile's rows and points.

    The parameter gradients of point tile t go to ``GradientLayout``'s place for tile t.
    """
    tile = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r, mask_p, mask_d = rows < B, offs_p < P, offs_d < D
    mask_rp = mask_r[:, None] & mask_p[None, :]
    z_tile = _load_point_tile(z_ptr, rows, offs_p, offs_d, mask_r, mask_p, mask_d, P, D, COMPUTE)
    point_offs = rows[:, None] * P + offs_p[None, :]
    upstream = tl.load(grad_out_ptr + point_offs, mask=mask_rp, other=0.0).to(COMPUTE)
    log_p = tl.load(out_ptr + point_offs, mask=mask_rp, other=0.0).to(COMPUTE)
    grad_z = _mixture_gradients(
        z_tile, upstream, log_p, mu_ptr, log_sigma_ptr, nu_ptr, log_pi_ptr,
        grad_mu_ptr, grad_log_sigma_ptr, grad_nu_ptr, grad_log_pi_ptr, (tile * B + rows) * K,
        rows, mask_r, mask_rp, offs_d, mask_d, K, D, COMPUTE, BLOCK_R, BLOCK_P, BLOCK_D, BLOCK_K,
        VECTOR_WIDTH, SCALAR_WIDTH, NEEDS_GRAD_Z,
    )
    if NEEDS_GRAD_Z:
        ptrs = grad_z_ptr + point_offs[:, :, None] * D + offs_d[None, None, :]
        tl.store(ptrs, grad_z, mask=mask_rp[:, :, None] & mask_d[None, None, :])


# ----------------------------------------------------------------------------------------
# Host side: launchers (no autograd here; ``casd.kernels.custom_ops`` registers the ops)
# ----------------------------------------------------------------------------------------


class GradientLayout:
    """Where a launch writes the four parameter gradients (d/dmu, d/ds, d/dnu, d/dlog pi).

    ``targets`` are four tensors (or views of one buffer); the gradients of (row b,
    component k) of point tile t sit at element ((t * B + b) * K + k) * width (+ j for the
    D-vectors), with ``vector_width`` for d/dmu, d/ds and ``scalar_width`` for d/dnu,
    d/dlog pi. Both widths are compile-time constants, so the stores vectorise.
    """

    def __init__(self, targets, vector_width: int, scalar_width: int):
        self.targets = targets
        self.vector_width = vector_width
        self.scalar_width = scalar_width

    @classmethod
    def direct(cls, mu, log_sigma, nu, log_pi) -> "GradientLayout":
        """One point tile: the gradient tensors themselves, in the inputs' dtypes."""
        return cls(tuple(torch.empty_like(t) for t in (mu, log_sigma, nu, log_pi)), mu.shape[2], 1)

    @classmethod
    def partials(cls, tiles: int, mu, dtype) -> "GradientLayout":
        """Several point tiles: one [tiles, ...] buffer of partial sums per gradient."""
        batch, components, dim = mu.shape
        vectors = [torch.empty((tiles, batch, components, dim), dtype=dtype, device=mu.device) for _ in range(2)]
        scalars = [torch.empty((tiles, batch, components), dtype=dtype, device=mu.device) for _ in range(2)]
        return cls((*vectors, *scalars), dim, 1)

    @classmethod
    def packed(cls, buffer: torch.Tensor, dim: int) -> "GradientLayout":
        """Views of a packed [tiles, B, K, packed_width(D)] buffer (``casd.kernels.packing``):
        what the distillation forward keeps."""
        width = buffer.shape[-1]
        return cls(unpack_gradients(buffer, dim), width, width)

    def kernel_args(self) -> tuple:
        return self.targets


def _contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensors]


def mixture_logpdf_forward(z, mu, log_sigma, nu, log_pi, tiles: TileConfig) -> torch.Tensor:
    """log p(z) [B, P] in the compute dtype: one launch. Inputs of any float dtype."""
    z, mu, log_sigma, nu, log_pi = _contiguous(z, mu, log_sigma, nu, log_pi)
    batch, points, dim = z.shape
    out_dtype, compute = compute_dtypes(use_fp64(z, mu, log_sigma, nu, log_pi))
    block_r, block_p, block_d = point_tile(batch, points, dim, tiles)
    log_p = torch.empty((batch, points), dtype=out_dtype, device=z.device)
    grid = (triton.cdiv(batch, block_r), triton.cdiv(points, block_p))
    _mixture_logpdf_forward_kernel[grid](
        z, mu, log_sigma, nu, log_pi, log_p, batch, points, mu.shape[1],
        D=dim, COMPUTE=compute, BLOCK_R=block_r, BLOCK_P=block_p, BLOCK_D=block_d,
        BLOCK_K=triton.next_power_of_2(mu.shape[1]),
        **FORWARD_WARPS.options(block_r * block_p * block_d).kwargs(),
    )
    return log_p


def mixture_logpdf_backward(
    grad_log_p, log_p, z, mu, log_sigma, nu, log_pi, *, needs_grad_z: bool, tiles: TileConfig
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad_log_p * log p) for (z, mu, log_sigma, nu, log_pi), each in its
    input's dtype (grad z is None unless ``needs_grad_z``). One launch when a row's points
    fit one tile; otherwise one launch and one deterministic ``sum`` over the tiles per gradient."""
    grad_log_p, z, mu, log_sigma, nu, log_pi = _contiguous(grad_log_p, z, mu, log_sigma, nu, log_pi)
    batch, points, dim = z.shape
    components = mu.shape[1]
    acc_dtype, compute = compute_dtypes(use_fp64(z, mu, log_sigma, nu, log_pi))
    block_r, block_p, block_d = point_tile(batch, points, dim, tiles)
    num_tiles = triton.cdiv(points, block_p)
    if num_tiles == 1:
        layout = GradientLayout.direct(mu, log_sigma, nu, log_pi)
    else:
        layout = GradientLayout.partials(num_tiles, mu, acc_dtype)
    grad_z = torch.empty_like(z) if needs_grad_z else None
    _mixture_logpdf_backward_kernel[(triton.cdiv(batch, block_r), num_tiles)](
        grad_log_p, log_p, z, mu, log_sigma, nu, log_pi,
        grad_z if needs_grad_z else z,  # never written when not needed
        *layout.kernel_args(),
        batch, points, components,
        D=dim, COMPUTE=compute, BLOCK_R=block_r, BLOCK_P=block_p, BLOCK_D=block_d,
        BLOCK_K=triton.next_power_of_2(components), VECTOR_WIDTH=layout.vector_width,
        SCALAR_WIDTH=layout.scalar_width, NEEDS_GRAD_Z=needs_grad_z,
        **BACKWARD_WARPS.options(block_r * block_p * block_d).kwargs(),
    )
    if num_tiles == 1:
        return (grad_z, *layout.targets)
    return (grad_z, *(g.sum(0).to(t.dtype) for g, t in zip(layout.targets, (mu, log_sigma, nu, log_pi))))
