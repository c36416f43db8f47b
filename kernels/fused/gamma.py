"""Keyed Gamma draws for the sampler's scales: X ~ Gamma(nu / 2, 1) [B, K, S] in one launch.

With one key per row (``--noise sample``), every random number of a row must come from its
key, so that the row draws the same numbers on whichever process holds it. The Gaussian
noise does (``student_t_rsample``); this kernel does the same for the Gamma variables
behind the scales w = (X / alpha)^(-1/2), alpha = nu / 2, which PyTorch's ``_standard_gamma``
cannot (it has one generator state, not one per row). No loop over rows anywhere.

Marsaglia and Tsang's method (ACM TOMS 26(3), 2000), with a fixed number of attempts: for
a = alpha (alpha >= 1) or alpha + 1 (alpha < 1), d = a - 1/3, c = 1/sqrt(9d), attempt j draws
a normal x and uniforms u, u' from the Philox words of counter (k * S + s, row, j, 1)
(``noise``), and v = (1 + c x)^3 is accepted if v > 0 and log u < x^2/2 + d - d v + d log v;
the first accepted attempt gives X = d v, times u'^(1/alpha) when alpha < 1. Acceptance is
at least 0.951 per attempt, so 16 attempts all fail with probability < 1e-21; X = d then.
``casd.kernels.philox.keyed_standard_gamma`` computes the same numbers in PyTorch.

The draw is not differentiable here; ``ops.keyed_gamma_scales`` adds the implicit
reparameterisation gradient dX/dalpha (PyTorch's ``_standard_gamma_grad``, as
``torch.distributions.Gamma.rsample`` uses). Computed in nu's dtype (at least float32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import philox
from .launch import TileConfig, WarpPolicy, compute_dtypes, use_fp64
from .noise import _box_muller, _keyed_words

__all__ = ["keyed_standard_gamma_forward"]

# One draw per thread: with its 16 unrolled Philox attempts a thread holding 4 draws needed 128
# registers and spilled (sm_90); the [B, K, S] draws are few, so programs stay small.
WARPS = WarpPolicy(values_per_thread=1)
GAMMA_ATTEMPTS = philox.GAMMA_ATTEMPTS
STREAM_GAMMA = tl.constexpr(philox.STREAM_GAMMA)  # counter word 3 of the Gamma draws


@triton.jit
def _keyed_gamma_kernel(
    nu_ptr,
    key_ptr,
    out_ptr,
    N,
    S,
    KS,
    COMPUTE: tl.constexpr,
    BLOCK: tl.constexpr,
    ATTEMPTS: tl.constexpr,
    KEY_PER_ROW: tl.constexpr,
):
    """out[b, k, s] ~ Gamma(nu[b, k] / 2, 1) for the BLOCK flat indices of this program."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # int32: B * K * S < 2^31
    mask = offs < N
    row = offs // KS
    counter = (offs - row * KS).to(tl.uint32)  # k * S + s
    alpha = 0.5 * tl.load(nu_ptr + offs // S, mask=mask, other=2.0).to(COMPUTE)
    boost = alpha < 1.0
    d = tl.where(boost, alpha + 1.0, alpha) - 1.0 / 3.0
    c = 1.0 / tl.sqrt(9.0 * d)
    result = d
    pending = mask
    for attempt in range(ATTEMPTS):
        r0, r1, r2, r3 = _keyed_words(key_ptr, row, counter, attempt, STREAM_GAMMA, KEY_PER_ROW)
        x, _ = _box_muller(r0, r1)
        x = x.to(COMPUTE)
        u = tl.uint_to_uniform_float(r2).to(COMPUTE)
        u_boost = tl.uint_to_uniform_float(r3).to(COMPUTE)
        t = 1.0 + c * x
        v = t * t * t
        safe_v = tl.where(v > 0.0, v, 1.0)
        accept = (v > 0.0) & (tl.log(u) < 0.5 * x * x + d - d * safe_v + d * tl.log(safe_v))
        draw = d * safe_v
        draw = tl.where(boost, draw * tl.exp(tl.log(u_boost) / alpha), draw)
        result = tl.where(pending & accept, draw, result)
        pending = pending & (accept == 0)
    tl.store(out_ptr + offs, result, mask=mask)


def keyed_standard_gamma_forward(nu: torch.Tensor, key: torch.Tensor, samples: int, tiles: TileConfig) -> torch.Tensor:
    """X ~ Gamma(nu / 2, 1) [B, K, S] in the compute dtype: one launch. ``key`` is an int64
    tensor of one key ([] / [1]) or one per row ([B])."""
    nu, key = nu.contiguous(), key.contiguous()
    batch, components = nu.shape
    out_dtype, compute = compute_dtypes(use_fp64(nu))
    total = batch * components * samples
    if total >= 2**31:
        raise ValueError(f"keyed Gamma draws: B*K*S = {total} must stay below 2^31; draw in smaller batches")
    block = min(triton.next_power_of_2(total), tiles.pack_tile // 4)  # 512 draws on a GPU
    out = torch.empty((batch, components, samples), dtype=out_dtype, device=nu.device)
    _keyed_gamma_kernel[(triton.cdiv(total, block),)](
        nu, key, out, total, samples, components * samples,
        COMPUTE=compute, BLOCK=block, ATTEMPTS=GAMMA_ATTEMPTS, KEY_PER_ROW=key.numel() > 1,
        **WARPS.options(block).kwargs(),
    )
    return out
