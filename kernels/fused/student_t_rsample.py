"""Fused ``student_t_rsample`` (formulation §4, §5.2), Triton forward + backward.

    z[b, k, s, :] = mu[b, k, :] + sigma[b, k, :] * eps[b, k, s, :] * w[b, k, s]     (w: the Gamma scales)

eps ~ N(0, I) is drawn in the kernel from a counter-based Philox generator and is
regenerated in the backward from the same key: it is never stored. The key is a device
tensor (int64, all 64 bits used): one key for the whole call, or one key per row. It is
read by the kernel, never by the host, so the launch does not synchronise, the key is not
a compile-time constant (no recompilation per key), and a CUDA graph that captured the
launch reads whatever key its replay finds in that tensor.

The stream (``casd.kernels.philox.keyed_normal`` is the same thing in PyTorch, bit for bit
up to the last ulp of log and sqrt): Philox-4x32-10 yields four numbers per counter, turned
into four normals by two Box-Muller pairs, so the four samples s = 4q .. 4q+3 of one
component share a counter and take one lane each:

    key     = keys[b] (one per row) or keys[0] (one per call)
    counter = ((k * ceil(S / 4) + s // 4) * D + d,  row,  0,  0)     lane = s % 4

with row = 0 for per-row keys: then row b's noise depends on its key and (k, s, d) only,
not on its position in the batch or on the other rows (so a sample draws the same noise
on whichever process of a distributed job holds it). With one key per call, the row
index enters the counter instead.

One program holds mu and sigma of BLOCK_C components as a [BLOCK_C, BLOCK_D] tile and
walks over their samples four at a time, so mu, log_sigma and w are read once and z is
written once. The backward sums over samples inside the program (d/dmu, d/dlog_sigma)
and over coordinates inside the tile (d/dw): no atomics, deterministic.

The output is float32 (float64 when an input is float64), whatever the input dtypes;
gradients come back in each input's dtype. The noise itself is float32 Box-Muller output
in both cases. ``HAS_NOISE`` is the test-only path that reads eps from a tensor instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import LaunchOptions, TileConfig, WarpPolicy, compute_dtypes, row_tile, use_fp64
from .. import philox
from .noise import _box_muller, _keyed_words

__all__ = ["RSampleLaunch", "rsample_launch", "student_t_rsample_forward", "student_t_rsample_backward"]

SAMPLES_PER_COUNTER = 4  # Philox-4x32: four normals per counter
STREAM_NORMAL = tl.constexpr(philox.STREAM_NORMAL)  # counter word 3 of the noise
# Elements of the [BLOCK_C, BLOCK_D] tile per GPU thread. Each element carries four
# Philox outputs and their Box-Muller transforms: compiled for sm_90 at D = 128, 4 per
# thread (16 warps) needs 95 registers forward and 101 backward (Triton 3.9) without
# spills; 8 per thread needs 128 and spills.
WARPS = WarpPolicy(values_per_thread=4)


@triton.jit
def _keyed_normal_quad(key_ptr, quad, offs_c, offs_d, K, S, D: tl.constexpr, KEY_PER_ROW: tl.constexpr):
    """eps for samples 4*quad .. 4*quad+3 of components offs_c: four [BLOCK_C, BLOCK_D] tiles."""
    # 32-bit division (C = B * K < 2^31): a 64-bit one is a slow subroutine with a stack frame
    component_index = offs_c.to(tl.int32)
    row = component_index // K
    component = component_index - row * K
    quads = (S + 3) // 4
    counter = ((component[:, None] * quads + quad) * D + offs_d[None, :]).to(tl.uint32)
    r0, r1, r2, r3 = _keyed_words(key_ptr, row[:, None], counter, 0, STREAM_NORMAL, KEY_PER_ROW)
    e0, e1 = _box_muller(r0, r1)
    e2, e3 = _box_muller(r2, r3)
    return e0, e1, e2, e3


@triton.jit
def _noise_quad(
    key_ptr, eps_ptr, quad, offs_c, offs_d, mask, K, S, D: tl.constexpr,
    COMPUTE: tl.constexpr, HAS_NOISE: tl.constexpr, KEY_PER_ROW: tl.constexpr,
):
    """eps for samples 4*quad .. 4*quad+3 of each component in the tile: four [BLOCK_C, BLOCK_D]."""
    if HAS_NOISE:
        sample = 4 * quad + offs_c[:, None] * 0  # as a tensor, so that masks combine in both modes
        base = (offs_c[:, None] * S + sample) * D + offs_d[None, :]
        e0 = tl.load(eps_ptr + base, mask=mask & (sample < S), other=0.0)
        e1 = tl.load(eps_ptr + base + D, mask=mask & (sample + 1 < S), other=0.0)
        e2 = tl.load(eps_ptr + base + 2 * D, mask=mask & (sample + 2 < S), other=0.0)
        e3 = tl.load(eps_ptr + base + 3 * D, mask=mask & (sample + 3 < S), other=0.0)
    else:
        e0, e1, e2, e3 = _keyed_normal_quad(key_ptr, quad, offs_c, offs_d, K, S, D, KEY_PER_ROW)
    return e0.to(COMPUTE), e1.to(COMPUTE), e2.to(COMPUTE), e3.to(COMPUTE)


@triton.jit
def _store_sample(
    z_ptr, scales_ptr, mu, sigma, eps, sample, offs_c, offs_d, mask_c, mask, S, D: tl.constexpr, COMPUTE: tl.constexpr
):
    """z[c, sample, :] = mu + sigma * eps * w[c, sample] for the tile's components (w: the scales)."""
    valid = (offs_c * 0 + sample) < S  # [BLOCK_C]
    w = tl.load(scales_ptr + offs_c * S + sample, mask=mask_c & valid, other=0.0).to(COMPUTE)
    z = mu + sigma * eps * w[:, None]
    ptrs = z_ptr + (offs_c[:, None] * S + sample) * D + offs_d[None, :]
    tl.store(ptrs, z, mask=mask & valid[:, None])


@triton.jit
def _accumulate_sample(
    grad_z_ptr, scales_ptr, grad_scales_ptr, sigma, eps, sample, offs_c, offs_d, mask_c, mask, S, D: tl.constexpr,
    grad_mu, grad_scaled, COMPUTE: tl.constexpr,
):
    """Add one sample's share to d/dmu and sum_s g eps w; write d/dw[c, sample]."""
    valid = (offs_c * 0 + sample) < S  # [BLOCK_C]
    g = tl.load(
        grad_z_ptr + (offs_c[:, None] * S + sample) * D + offs_d[None, :],
        mask=mask & valid[:, None],
        other=0.0,
    ).to(COMPUTE)
    w = tl.load(scales_ptr + offs_c * S + sample, mask=mask_c & valid, other=0.0).to(COMPUTE)
    g_eps = g * eps
    tl.store(grad_scales_ptr + offs_c * S + sample, tl.sum(g_eps * sigma, axis=1), mask=mask_c & valid)
    return grad_mu + g, grad_scaled + g_eps * w[:, None]


@triton.jit
def _rsample_forward_kernel(
    mu_ptr,
    log_sigma_ptr,
    scales_ptr,
    eps_ptr,
    key_ptr,
    z_ptr,
    C,
    K,
    S,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    KEY_PER_ROW: tl.constexpr,
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
        e0, e1, e2, e3 = _noise_quad(
            key_ptr, eps_ptr, quad, offs_c, offs_d, mask, K, S, D, COMPUTE, HAS_NOISE, KEY_PER_ROW
        )
        s = 4 * quad
        _store_sample(z_ptr, scales_ptr, mu, sigma, e0, s, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)
        _store_sample(z_ptr, scales_ptr, mu, sigma, e1, s + 1, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)
        _store_sample(z_ptr, scales_ptr, mu, sigma, e2, s + 2, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)
        _store_sample(z_ptr, scales_ptr, mu, sigma, e3, s + 3, offs_c, offs_d, mask_c, mask, S, D, COMPUTE)


@triton.jit
def _rsample_backward_kernel(
    grad_z_ptr,
    log_sigma_ptr,
    scales_ptr,
    eps_ptr,
    key_ptr,
    grad_mu_ptr,
    grad_log_sigma_ptr,
    grad_scales_ptr,
    C,
    K,
    S,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    KEY_PER_ROW: tl.constexpr,
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
        e0, e1, e2, e3 = _noise_quad(
            key_ptr, eps_ptr, quad, offs_c, offs_d, mask, K, S, D, COMPUTE, HAS_NOISE, KEY_PER_ROW
        )
        s = 4 * quad
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, scales_ptr, grad_scales_ptr, sigma, e0, s, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, scales_ptr, grad_scales_ptr, sigma, e1, s + 1, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, scales_ptr, grad_scales_ptr, sigma, e2, s + 2, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
        grad_mu, grad_scaled = _accumulate_sample(
            grad_z_ptr, scales_ptr, grad_scales_ptr, sigma, e3, s + 3, offs_c, offs_d, mask_c, mask, S, D,
            grad_mu, grad_scaled, COMPUTE,
        )
    tl.store(grad_mu_ptr + params, grad_mu, mask=mask)
    tl.store(grad_log_sigma_ptr + params, grad_scaled * sigma, mask=mask)


@dataclass(frozen=True)
class RSampleLaunch:
    """Grid and tile of one sampler launch over C = B * K components."""

    grid: tuple[int]
    components: int  # C = B * K
    block_c: int
    block_d: int
    options: LaunchOptions


def rsample_launch(batch: int, components: int, samples: int, dim: int, tiles: TileConfig) -> RSampleLaunch:
    """The launch for mu [B, K, D] and S samples; refuses counters beyond 32 bits per row."""
    rows = batch * components
    block_c, block_d = row_tile(rows, dim, tiles)
    quads = triton.cdiv(samples, SAMPLES_PER_COUNTER)
    if components * quads * dim >= 2**32:
        raise ValueError(
            f"student_t_rsample: K*ceil(S/4)*D = {components * quads * dim} Philox counters per row "
            "exceed the 32-bit counter word; draw the samples in smaller batches"
        )
    return RSampleLaunch(
        grid=(triton.cdiv(rows, block_c),),
        components=rows,
        block_c=block_c,
        block_d=block_d,
        options=WARPS.options(block_c * block_d),
    )


def _key_per_row(key: torch.Tensor) -> bool:
    return key.dim() == 1 and key.numel() > 1


def student_t_rsample_forward(mu, log_sigma, scales, key, eps, tiles: TileConfig) -> torch.Tensor:
    """z [B, K, S, D] in the compute dtype: one launch. ``key`` is an int64 tensor of one key
    ([] or [1]) or one per row ([B]); ``eps`` (test path) replaces the keyed noise if given."""
    mu, log_sigma, scales, key = mu.contiguous(), log_sigma.contiguous(), scales.contiguous(), key.contiguous()
    has_noise = eps is not None
    eps = eps.contiguous() if has_noise else None
    batch, components, dim = mu.shape
    samples = scales.shape[2]
    out_dtype, compute = compute_dtypes(use_fp64(mu, log_sigma, scales, *([eps] if has_noise else [])))
    launch = rsample_launch(batch, components, samples, dim, tiles)
    z = torch.empty((batch, components, samples, dim), dtype=out_dtype, device=mu.device)
    _rsample_forward_kernel[launch.grid](
        mu, log_sigma, scales, eps if has_noise else mu, key, z,  # eps is never read without noise
        launch.components, components, samples,
        D=dim, COMPUTE=compute, BLOCK_C=launch.block_c, BLOCK_D=launch.block_d,
        HAS_NOISE=has_noise, KEY_PER_ROW=_key_per_row(key), **launch.options.kwargs(),
    )
    return z


def student_t_rsample_backward(grad_z, log_sigma, scales, key, eps, mu_dtype: torch.dtype, tiles: TileConfig):
    """(d/dmu, d/dlog_sigma, d/dscales) in the inputs' dtypes: one launch, the noise regenerated."""
    grad_z, log_sigma, scales, key = grad_z.contiguous(), log_sigma.contiguous(), scales.contiguous(), key.contiguous()
    has_noise = eps is not None
    eps = eps.contiguous() if has_noise else None
    batch, components, dim = log_sigma.shape
    samples = scales.shape[2]
    _, compute = compute_dtypes(use_fp64(log_sigma, scales, *([eps] if has_noise else [])) or mu_dtype == torch.float64)
    launch = rsample_launch(batch, components, samples, dim, tiles)
    grad_mu = torch.empty_like(log_sigma, dtype=mu_dtype)
    grad_log_sigma = torch.empty_like(log_sigma)
    grad_scales = torch.empty_like(scales)
    _rsample_backward_kernel[launch.grid](
        grad_z, log_sigma, scales, eps if has_noise else log_sigma, key, grad_mu, grad_log_sigma, grad_scales,
        launch.components, components, samples,
        D=dim, COMPUTE=compute, BLOCK_C=launch.block_c, BLOCK_D=launch.block_d,
        HAS_NOISE=has_noise, KEY_PER_ROW=_key_per_row(key), **launch.options.kwargs(),
    )
    return grad_mu, grad_log_sigma, grad_scales
