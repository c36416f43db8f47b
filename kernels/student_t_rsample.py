"""Fused ``student_t_rsample`` (formulation §4, §5.2), Triton forward + backward.

    z[b, k, s, :] = mu[b, k, :] + sigma[b, k, :] * eps[b, k, s, :] * w[b, k, s]

eps ~ N(0, I) comes from Triton's counter-based Philox generator, keyed by (seed, element),
and is regenerated in the backward from the same seed: it is never stored. Philox yields
four numbers per counter, so the four samples s = 4q .. 4q+3 of one component share a
counter and take one lane each:

    counter(c, s, d) = (c * ceil(S / 4) + s // 4) * D + d,   lane = s % 4,   c = b * K + k.

One program holds mu and sigma of BLOCK_C components as a [BLOCK_C, BLOCK_D] tile and
walks over their samples four at a time, so mu, log_sigma and w are read once and z is
written once. The backward sums over samples inside the program (d/dmu, d/dlog_sigma)
and over coordinates inside the tile (d/dw): no atomics, deterministic.

The output is float32 (float64 when an input is float64), whatever the input dtypes;
gradients come back in each input's dtype. ``student_t_rsample_with_noise_triton`` is the
test-only entry point that reads eps from a tensor instead (no gradient for eps).
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
    row_tile,
    use_fp64,
)

__all__ = ["student_t_rsample_triton", "student_t_rsample_with_noise_triton"]

SAMPLES_PER_COUNTER = 4  # tl.randn4x: four normals per Philox counter
# Elements of the [BLOCK_C, BLOCK_D] tile per GPU thread. Each element carries four
# Philox outputs and their Box-Muller transforms: compiled for sm_90 (Triton 3.9, ptxas)
# at D = 128, 4 per thread (16 warps) needs 78 registers forward and 96 backward without
# spills; 8 per thread needs 124 / 128 and the backward spills.
VALUES_PER_THREAD = 4


@triton.jit
def _noise_quad(
    seed, eps_ptr, quad, offs_c, offs_d, mask, S, D, COMPUTE: tl.constexpr, HAS_NOISE: tl.constexpr
):
    """eps for samples 4*quad .. 4*quad+3 of each component in the tile: four [BLOCK_C, BLOCK_D]."""
    if HAS_NOISE:
        sample = 4 * quad + offs_c[:, None] * 0  # as a tensor, so that masks combine in both modes
        base = (offs_c[:, None] * S + sample) * D + offs_d[None, :]
        e0 = tl.load(eps_ptr + base, mask=mask & (sample < S), other=0.0).to(COMPUTE)
        e1 = tl.load(eps_ptr + base + D, mask=mask & (sample + 1 < S), other=0.0).to(COMPUTE)
        e2 = tl.load(eps_ptr + base + 2 * D, mask=mask & (sample + 2 < S), other=0.0).to(COMPUTE)
        e3 = tl.load(eps_ptr + base + 3 * D, mask=mask & (sample + 3 < S), other=0.0).to(COMPUTE)
    else:
        quads = (S + 3) // 4
        counter = ((offs_c[:, None] * quads + quad) * D + offs_d[None, :]).to(tl.uint32)
        e0, e1, e2, e3 = tl.randn4x(seed, counter)
        e0, e1, e2, e3 = e0.to(COMPUTE), e1.to(COMPUTE), e2.to(COMPUTE), e3.to(COMPUTE)
    return e0, e1, e2, e3


@triton.jit
def _store_sample(z_ptr, w_ptr, mu, sigma, eps, sample, offs_c, offs_d, mask_c, mask, S, D, COMPUTE: tl.constexpr):
    """z[c, sample, :] = mu + sigma * eps * w[c, sample] for the tile's components."""
    valid = (offs_c * 0 + sample) < S  # [BLOCK_C]
    w = tl.load(w_ptr + offs_c * S + sample, mask=mask_c & valid, other=0.0).to(COMPUTE)
    z = mu + sigma * eps * w[:, None]
    ptrs = z_ptr + (offs_c[:, None] * S + sample) * D + offs_d[None, :]
    tl.store(ptrs, z, mask=mask & valid[:, None])


@triton.jit
def _accumulate_sample(
    grad_z_ptr, w_ptr, grad_w_ptr, sigma, eps, sample, offs_c, offs_d, mask_c, mask, S, D,
    grad_mu, grad_scaled, COMPUTE: tl.constexpr,
):
    """Add one sample's share to d/dmu and sum_s g eps w; write d/dw[c, sample]."""
    valid = (offs_c * 0 + sample) < S  # [BLOCK_C]
    g = tl.load(
        grad_z_ptr + (offs_c[:, None] * S + sample) * D + offs_d[None, :],
        mask=mask & valid[:, None],
        other=0.0,
    ).to(COMPUTE)
    w = tl.load(w_ptr + offs_c * S + sample, mask=mask_c & valid, other=0.0).to(COMPUTE)
    g_eps = g * eps
    tl.store(grad_w_ptr + offs_c * S + sample, tl.sum(g_eps * sigma, axis=1), mask=mask_c & valid)
    return grad_mu + g, grad_scaled + g_eps * w[:, None]


@triton.jit
def _rsample_forward_kernel(
    mu_ptr,
    log_sigma_ptr,
    w_ptr,
    eps_ptr,
    z_ptr,
    seed,
    C,
    S,
    D,
    COMPUTE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_NOISE: tl.constexpr,
):
    """Program c-tile: every sample of components [c0, c0 + BLOCK_C); C = B * K."""
    offs_c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_d < D)[None, :]
    params = offs_c[:, None] * D + offs_d[None, :]
    mu = tl.load(mu_ptr + params, mask=mask, other=0.0).to(COMPUTE)
    sigma = tl.exp(tl.load(log_sigma_ptr + params, mask=mask, other=0.0).to(COMPUTE))
    for quad in range(0, (S + 3) // 4):
        e0, e1, e2, e3 = _noise_quad(seed, eps_ptr, quad, offs_c, offs_d, mask, S, D, COMPUTE, HAS_NOISE)
        s = 4 * quad
        _store_sample(z_ptr, w_ptr, mu, sigma, e0, s, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)
        _store_sample(z_ptr, w_ptr, mu, sigma, e1, s + 1, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)
        _store_sample(z_ptr, w_ptr, mu, sigma, e2, s + 2, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)
        _store_sample(z_ptr, w_ptr, mu, sigma, e3, s + 3, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)


@triton.jit
def _rsample_backward_kernel(
    grad_z_ptr,
    log_sigma_ptr,
    w_ptr,
    eps_ptr,
    grad_mu_ptr,
    grad_log_sigma_ptr,
    grad_w_ptr,
    seed,
    C,
    S,
    D,
    COMPUTE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_NOISE: tl.constexpr,
):
    """d/dmu = sum_s g;  d/dlog_sigma = sigma * sum_s g eps w;  d/dw = sum_d g sigma eps."""
    offs_c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_d < D)[None, :]
    params = offs_c[:, None] * D + offs_d[None, :]
    sigma = tl.exp(tl.load(log_sigma_ptr + params, mask=mask, other=0.0).to(COMPUTE))
    grad_mu = tl.zeros([BLOCK_C, BLOCK_D], COMPUTE)
    grad_scaled = tl.zeros([BLOCK_C, BLOCK_D], COMPUTE)  # sum_s g eps w
    for quad in range(0, (S + 3) // 4):
        e0, e1, e2, e3 = _noise_quad(seed, eps_ptr, quad, offs_c, offs_d, mask, S, D, COMPUTE, HAS_NOISE)
        s = 4 * quad
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, w_ptr, grad_w_ptr, sigma, e0, s, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, w_ptr, grad_w_ptr, sigma, e1, s + 1, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, w_ptr, grad_w_ptr, sigma, e2, s + 2, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, w_ptr, grad_w_ptr, sigma, e3, s + 3, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
    tl.store(grad_mu_ptr + params, grad_mu, mask=mask)
    tl.store(grad_log_sigma_ptr + params, grad_scaled * sigma, mask=mask)


def _launch_config(mu: torch.Tensor, samples: int, tiles: TileConfig) -> dict:
    batch, components, dim = mu.shape
    rows = batch * components
    block_c, block_d = row_tile(rows, dim, tiles)
    quads = triton.cdiv(samples, SAMPLES_PER_COUNTER)
    if rows * quads * dim >= 2**32:
        raise ValueError(
            f"student_t_rsample: B*K*ceil(S/4)*D = {rows * quads * dim} Philox counters exceed "
            "the 32-bit counter space; draw the samples in smaller batches"
        )
    return dict(
        grid=(triton.cdiv(rows, block_c),),
        rows=rows,
        block_c=block_c,
        block_d=block_d,
        options=launch_options(block_c * block_d, VALUES_PER_THREAD),
    )


class StudentTRSampleFunction(torch.autograd.Function):
    """z = mu + sigma * eps * w with eps drawn from ``seed`` (or given, for tests)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type=AMP_DEVICE_TYPE)
    def forward(ctx, mu, log_sigma, w, seed: int, eps, tiles: TileConfig):
        mu, log_sigma, w = mu.contiguous(), log_sigma.contiguous(), w.contiguous()
        has_noise = eps is not None
        if has_noise:
            eps = eps.contiguous()
        fp64 = use_fp64(mu, log_sigma, w, *([eps] if has_noise else []))
        batch, components, dim = mu.shape
        samples = w.shape[2]
        cfg = _launch_config(mu, samples, tiles)
        z = torch.empty(
            (batch, components, samples, dim),
            dtype=torch.float64 if fp64 else torch.float32,
            device=mu.device,
        )
        _rsample_forward_kernel[cfg["grid"]](
            mu,
            log_sigma,
            w,
            eps if has_noise else mu,  # never read without noise
            z,
            seed,
            cfg["rows"],
            samples,
            dim,
            COMPUTE=tl.float64 if fp64 else tl.float32,
            BLOCK_C=cfg["block_c"],
            BLOCK_D=cfg["block_d"],
            HAS_NOISE=has_noise,
            **cfg["options"],
        )
        # mu is not needed: d/dmu = sum_s g. eps is saved only on the test path.
        ctx.save_for_backward(log_sigma, w, *([eps] if has_noise else []))
        ctx.seed, ctx.has_noise, ctx.fp64, ctx.tiles = seed, has_noise, fp64, tiles
        ctx.mu_dtype = mu.dtype
        return z

    @staticmethod
    @torch.amp.custom_bwd(device_type=AMP_DEVICE_TYPE)
    def backward(ctx, grad_z):
        log_sigma, w, *noise = ctx.saved_tensors
        eps = noise[0] if ctx.has_noise else None
        grad_z = grad_z.contiguous()
        cfg = _launch_config(log_sigma, w.shape[2], ctx.tiles)
        grad_mu = torch.empty_like(log_sigma, dtype=ctx.mu_dtype)
        grad_log_sigma = torch.empty_like(log_sigma)
        grad_w = torch.empty_like(w)
        _rsample_backward_kernel[cfg["grid"]](
            grad_z,
            log_sigma,
            w,
            eps if ctx.has_noise else log_sigma,  # never read without noise
            grad_mu,
            grad_log_sigma,
            grad_w,
            ctx.seed,
            cfg["rows"],
            w.shape[2],
            log_sigma.shape[2],
            COMPUTE=tl.float64 if ctx.fp64 else tl.float32,
            BLOCK_C=cfg["block_c"],
            BLOCK_D=cfg["block_d"],
            HAS_NOISE=ctx.has_noise,
            **cfg["options"],
        )
        return grad_mu, grad_log_sigma, grad_w, None, None, None


def _check(mu, log_sigma, w, eps=None):
    named = {"mu": mu, "log_sigma": log_sigma, "w": w}
    if eps is not None:
        named["eps"] = eps
    check_launch_inputs(named)


def student_t_rsample_triton(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    w: torch.Tensor,
    seed: int,
    *,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """[B, K, S, D] reparameterised Student-t draws; bitwise repeatable for a given seed."""
    _check(mu, log_sigma, w)
    return StudentTRSampleFunction.apply(mu, log_sigma, w, int(seed), None, tiles or default_tiles())


def student_t_rsample_with_noise_triton(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    w: torch.Tensor,
    eps: torch.Tensor,
    *,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """Test-only: the same kernels with eps [B, K, S, D] read from memory (no grad for eps)."""
    _check(mu, log_sigma, w, eps)
    return StudentTRSampleFunction.apply(mu, log_sigma, w, 0, eps, tiles or default_tiles())
