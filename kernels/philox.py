"""Counter-based random numbers in PyTorch: the numbers the kernels draw, bit for bit.

The fused sampler draws its Gaussian noise inside the kernel from Philox-4x32-10 (Salmon et
al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), as ``tl.philox`` computes it,
and regenerates it in the backward instead of storing it. This module computes the same
stream with PyTorch tensor operations, so that

- ``backend="torch"`` and ``backend="triton"`` draw the *same* noise for the same key
  (equal up to the last ulp of log and sqrt in Box-Muller; cos and sin are the same
  polynomials), and
- the tests can check the kernel's counter layout element by element, not only in
  distribution.

Philox works on 32-bit words; here each word is an int64 tensor holding a value in
[0, 2^32). The 32 x 32 -> 64-bit products that Philox needs are exact in int64 as
two's-complement (wrapping) multiplication, which is what PyTorch's CPU and CUDA kernels
do; only the low 64 bits are used, so the wrap-around never changes a result.

Keys are 64-bit (int64 tensors; negative values are simply the upper half of the range).
"""
from __future__ import annotations

import torch

__all__ = [
    "philox4x32",
    "uint32_to_uniform",
    "cos_sin_turns",
    "box_muller",
    "normal_counters",
    "keyed_normal",
    "keyed_standard_gamma",
    "random_key",
    "GAMMA_ATTEMPTS",
]

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 multipliers
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
# The largest float32 below 2^-31: int32 values x * scale stay below 1.0 (tl.uint_to_uniform_float).
_UNIFORM_SCALE = 4.6566127342e-10
SAMPLES_PER_COUNTER = 4
# Counter word 3 separates the streams drawn from one key: the sampler's Gaussian noise and
# the Gamma draws of its scales.
STREAM_NORMAL, STREAM_GAMMA = 0, 1
# Marsaglia-Tsang accepts with probability >= 0.951 (alpha >= 1): all 16 attempts fail with
# probability < 0.049^16 ~ 1e-21, then the draw is d = alpha - 1/3 (documented, never seen).
GAMMA_ATTEMPTS = 16


def _mulhilo(multiplier: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of multiplier * word, both < 2^32."""
    product = word * multiplier  # < 2^64: exact modulo 2^64 in int64
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32(key: torch.Tensor, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """Philox-4x32-10 of the counter (c0, c1, c2, c3) under the 64-bit key, as ``tl.philox``.

    All arguments are int64 tensors (broadcastable); counter words hold values in [0, 2^32).
    Returns four int64 tensors with values in [0, 2^32).
    """
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(ROUNDS):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint32_to_uniform(word: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1) from a 32-bit word, as ``tl.uint_to_uniform_float``: the word as a
    signed int32, folded onto [0, 2^31) by x -> -x - 1 for negative x, times 2^-31."""
    signed = torch.where(word >= 2**31, word - 2**32, word)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def cos_sin_turns(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos 2 pi u, sin 2 pi u) for u in [0, 1): the kernels' exact reduction to [-pi/4, pi/4]
    and Taylor polynomials (``fused/special.py``, ``_cos_sin_turns``), in the same order."""
    x = 4.0 * u
    n = torch.floor(x + 0.5)
    a = (x - n) * 1.5707963267948966
    a2 = a * a
    sin_a = a * (1.0 + a2 * (-1.0 / 6.0 + a2 * (1.0 / 120.0 + a2 * (-1.0 / 5040.0 + a2 * (1.0 / 362880.0)))))
    cos_a = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24.0 + a2 * (-1.0 / 720.0 + a2 * (1.0 / 40320.0 + a2 * (-1.0 / 3628800.0)))))
    quadrant = n - 4.0 * torch.floor(n * 0.25)
    cos_t = torch.where(quadrant == 0, cos_a, torch.where(quadrant == 1, -sin_a, torch.where(quadrant == 2, -cos_a, sin_a)))
    sin_t = torch.where(quadrant == 0, sin_a, torch.where(quadrant == 1, cos_a, torch.where(quadrant == 2, -sin_a, -cos_a)))
    return cos_t, sin_t


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals from two uniforms, as the kernels' ``_box_muller``."""
    radius = torch.sqrt(-2.0 * torch.log(u1.clamp_min(1.0e-7)))
    cos_t, sin_t = cos_sin_turns(u2)
    return radius * cos_t, radius * sin_t


def normal_counters(components: int, samples: int, dim: int, device) -> torch.Tensor:
    """The first counter word of every (k, quad, d): ((k * ceil(S/4) + quad) * D + d), [K, Q, D]."""
    quads = -(-samples // SAMPLES_PER_COUNTER)
    k = torch.arange(components, device=device, dtype=torch.int64).view(-1, 1, 1)
    quad = torch.arange(quads, device=device, dtype=torch.int64).view(1, -1, 1)
    d = torch.arange(dim, device=device, dtype=torch.int64).view(1, 1, -1)
    return (k * quads + quad) * dim + d


def keyed_normal(key: torch.Tensor, batch: int, components: int, samples: int, dim: int) -> torch.Tensor:
    """eps [B, K, S, D] float32: the sampler kernel's noise for ``key`` ([] / [1]: one key,
    [B]: one key per row; see ``fused/student_t_rsample.py`` for the counter layout)."""
    device = key.device
    counters = normal_counters(components, samples, dim, device).unsqueeze(0)  # [1, K, Q, D]
    key, row = _row_words(key, batch)
    key, row = key.unsqueeze(-1), row.unsqueeze(-1)
    stream = torch.tensor(STREAM_NORMAL, device=device)
    words = philox4x32(key, counters, row, torch.zeros((), device=device, dtype=torch.int64), stream)
    shape = torch.broadcast_shapes(*(w.shape for w in words), (batch, 1, 1, 1))
    u = [uint32_to_uniform(w.expand(shape)) for w in words]
    n0, n1 = box_muller(u[0], u[1])
    n2, n3 = box_muller(u[2], u[3])
    eps = torch.stack([n0, n1, n2, n3], dim=3)  # [B, K, Q, 4, D]: lane s % 4 of quad s // 4
    return eps.reshape(batch, components, -1, dim)[:, :, :samples]


def _row_words(key: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(key, row counter word) broadcastable to [B, ...]: one key for all rows (then the row
    index is counted), or one key per row (then it is not: a row's draws depend on its key)."""
    device = key.device
    if key.numel() == 1:
        return key.reshape(()), torch.arange(batch, device=device, dtype=torch.int64).view(-1, 1, 1)
    return key.view(batch, 1, 1), torch.zeros((), device=device, dtype=torch.int64)


def keyed_standard_gamma(alpha: torch.Tensor, key: torch.Tensor, samples: int) -> torch.Tensor:
    """X ~ Gamma(alpha, 1) [B, K, S] for alpha [B, K], keyed like the sampler's noise (counter
    (k * S + s, row, attempt, STREAM_GAMMA)); the same numbers as the ``keyed_gamma`` kernel.

    Marsaglia and Tsang's method (ACM TOMS 26(3), 2000): with d = a - 1/3, c = 1/sqrt(9d),
    a normal x and a uniform u, v = (1 + c x)^3 is accepted when v > 0 and
    log u < x^2/2 + d - d v + d log v; then X = d v. For alpha < 1, a = alpha + 1 and
    X = d v * u'^(1/alpha) with a further uniform u'. Attempt j uses counter word 2 = j; the
    first accepted attempt wins. Computed in alpha's dtype (at least float32); the random
    words themselves are float32 uniforms and normals, as in the kernel. Not differentiable:
    ``ops.keyed_gamma_scales`` adds the implicit reparameterisation gradient.
    """
    batch, components = alpha.shape
    dtype = torch.promote_types(alpha.dtype, torch.float32)
    alpha = alpha.to(dtype)
    key, row = _row_words(key, batch)
    counter = (torch.arange(components, device=alpha.device).view(-1, 1) * samples
               + torch.arange(samples, device=alpha.device).view(1, -1)).unsqueeze(0)  # [1, K, S]
    boost = alpha < 1
    shape_a = torch.where(boost, alpha + 1, alpha).unsqueeze(-1)  # [B, K, 1]
    d = shape_a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    result = d.expand(batch, components, samples).clone()  # the fallback, overwritten below
    pending = torch.ones(batch, components, samples, dtype=torch.bool, device=alpha.device)
    for attempt in range(GAMMA_ATTEMPTS):
        words = philox4x32(key, counter, row, torch.tensor(attempt, device=alpha.device),
                           torch.tensor(STREAM_GAMMA, device=alpha.device))
        x, _ = box_muller(uint32_to_uniform(words[0]), uint32_to_uniform(words[1]))
        u, u_boost = uint32_to_uniform(words[2]).to(dtype), uint32_to_uniform(words[3]).to(dtype)
        x = x.to(dtype)
        t = 1.0 + c * x
        v = t * t * t
        safe_v = torch.where(v > 0, v, 1.0)
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * safe_v + d * torch.log(safe_v))
        draw = d * safe_v
        draw = torch.where(boost.unsqueeze(-1), draw * torch.exp(torch.log(u_boost) / alpha.unsqueeze(-1)), draw)
        take = pending & accept
        result = torch.where(take, draw, result)
        pending = pending & ~accept
    return result


def random_key(device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh 64-bit key as an int64 tensor on ``device``, drawn by the device's own generator.

    Drawn on the device, it costs one small kernel and no host sync, follows
    ``torch.manual_seed``, and inside a captured CUDA graph it is redrawn on every replay
    (PyTorch keeps its CUDA generator's seed and offset in device memory during capture).
    """
    return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, device=device, generator=generator)
