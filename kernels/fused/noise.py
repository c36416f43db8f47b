"""@triton.jit helpers of the keyed random streams: Philox words for a key, normals, uniforms.

Everything random in the kernels is a pure function of a 64-bit key and a 128-bit counter
(Philox-4x32-10, ``tl.philox``), so a backward can regenerate what its forward drew, a CUDA
graph replays whatever key it finds in memory, and ``casd.kernels.philox`` can compute the
very same numbers in PyTorch. Counter words, for row b, component k of K, sample s of S:

    sampler noise:  (((k * ceil(S/4) + s // 4) * D + d),  row,  0,        0)   lane s % 4
    Gamma draws:    (k * S + s,                           row,  attempt,  1)

where row = b with one key for all rows, and row = 0 with one key per row (a row's numbers
then depend on its own key only). Word 3 keeps the two streams of one key apart.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_keyed_words", "_box_muller", "_cos_sin_turns"]

HALF_PI = tl.constexpr(1.5707963267948966)


@triton.jit
def _keyed_words(key_ptr, row, counter, word2, word3, KEY_PER_ROW: tl.constexpr):
    """Four Philox words for ``counter`` (uint32 tile) of the given rows (int32, same shape or
    broadcastable): the key is key_ptr[row] with KEY_PER_ROW, else key_ptr[0] and the row
    index goes into counter word 1."""
    zero = counter * 0
    if KEY_PER_ROW:
        key = tl.load(key_ptr + row)
        row_word = zero
    else:
        key = tl.load(key_ptr)
        row_word = zero + row.to(tl.uint32)
    return tl.philox(key, counter, row_word, zero + word2, zero + word3)


@triton.jit
def _cos_sin_turns(u):
    """(cos 2 pi u, sin 2 pi u) for u in [0, 1), float32, to within 2 ulps, in plain tl ops.

    libdevice's cosf/sinf carry a slow path for huge arguments (Payne-Hanek reduction with a
    28-byte local array), which ptxas reports as stack on every kernel that calls them
    (Triton 3.6), although 2 pi u never needs it. Here the reduction is exact instead: with
    x = 4u, n = round(x) and f = x - n in [-1/2, 1/2] (both exact in float), 2 pi u = n pi/2 + a
    with a = f pi/2 in [-pi/4, pi/4], where Taylor polynomials of degree 9 (sin) and 10 (cos)
    are accurate to 2e-9; the quadrant n mod 4 swaps and negates them.
    ``casd.kernels.philox`` computes exactly the same in PyTorch.
    """
    x = 4.0 * u
    n = tl.floor(x + 0.5)
    a = (x - n) * HALF_PI
    a2 = a * a
    sin_a = a * (1.0 + a2 * (-1.0 / 6.0 + a2 * (1.0 / 120.0 + a2 * (-1.0 / 5040.0 + a2 * (1.0 / 362880.0)))))
    cos_a = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24.0 + a2 * (-1.0 / 720.0 + a2 * (1.0 / 40320.0 + a2 * (-1.0 / 3628800.0)))))
    quadrant = n - 4.0 * tl.floor(n * 0.25)  # n mod 4 (n = 4 when u rounds up to the full turn)
    cos_t = tl.where(quadrant == 0.0, cos_a, tl.where(quadrant == 1.0, -sin_a, tl.where(quadrant == 2.0, -cos_a, sin_a)))
    sin_t = tl.where(quadrant == 0.0, sin_a, tl.where(quadrant == 1.0, cos_a, tl.where(quadrant == 2.0, -sin_a, -cos_a)))
    return cos_t, sin_t


@triton.jit
def _box_muller(word1, word2):
    """Two independent standard normals from two random 32-bit words, via uniforms in [0, 1)
    (tl.uint_to_uniform_float) and tl.pair_uniform_to_normal's transform, with the
    exact-reduction cos/sin of ``_cos_sin_turns``."""
    u1 = tl.uint_to_uniform_float(word1)
    u2 = tl.uint_to_uniform_float(word2)
    radius = tl.sqrt(-2.0 * tl.log(tl.maximum(1.0e-7, u1)))
    cos_t, sin_t = _cos_sin_turns(u2)
    return radius * cos_t, radius * sin_t
