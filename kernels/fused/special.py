"""Special functions for the kernels, in plain ``tl`` operations (formulation §3, §5.1).

Triton's CPU interpreter runs only ``tl`` operations (no libdevice: no ``lgamma``,
``digamma`` or ``log1p``), and the kernels must run there, so these are written out. Each
one is accurate to a few ulps of its result's scale in float32 and float64, for every
nu > 0 and D >= 1 (tests/test_kernel_special.py measures them against float64 scipy).

The Student-t log-normaliser's nu-dependent part, with x = nu / 2 and a = D / 2,

    c(nu)  = lgamma(x + a) - lgamma(x) - a log(2 pi x)                    [C_k = c - sum_j s_kj]
    c'(nu) = (psi(x + a) - psi(x) - a / x) / 2,

is a difference of two numbers that grow like x log x. At nu = 1e4, lgamma(x) ~ 4e4 and
one float32 ulp of it is 4e-3, so subtracting two separately computed lgamma values would
lose everything; the formulas below subtract analytically instead.

Both arguments are first raised to at least 8 with the recurrences
lgamma(x) = lgamma(x + 8) - log prod_{i<8} (x + i) and psi(x) = psi(x + 8) - sum_{i<8} 1/(x + i)
(X = x or x + 8, Y = x + a or x + a + 8, A = Y - X exactly). For X, Y >= 8 Stirling's series

    lgamma(y) = (y - 1/2) log y - y + log(2 pi) / 2 + S(y),   S(y) = sum_k B_2k / (2k (2k-1) y^(2k-1))
    psi(y)    = log y - 1 / (2y) - T(y),                      T(y) = sum_k B_2k / (2k y^2k)

truncated after y^-13 (resp. y^-14) is accurate to 1e-15 relative. With L = log1p(A / X):

    lgamma(Y) - lgamma(X) = (Y - 1/2) L + A (log X - 1) + S(Y) - S(X)
    psi(Y) - psi(X)       = L + A / (2 X Y) - T(Y) + T(X)

so, without a shift (x >= 8, the case where it matters), c = (x + a - 1/2) log1p(a/x) - a (1 + log 2 pi)
+ S(x + a) - S(x): every term is O(a), nothing of size x log x is ever formed. And
c' = -(u - log1p u) + a / (2 x (x + a)) - T(x + a) + T(x) with u = a / x: both leading
terms are O(a^2 / x^2) and computed without cancellation.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_log1p", "_x_minus_log1p", "_student_t_normaliser", "_student_t_normaliser_dnu"]

LOG_2PI = tl.constexpr(1.8378770664093453)  # log(2 pi)
SHIFT = tl.constexpr(8.0)  # Stirling's series is used for arguments >= 8


@triton.jit
def _log1p(x):
    """log(1 + x) for x > -1, accurate for tiny |x| without libdevice; log1p(inf) = inf.

    Goldberg's trick: u = 1 + x is rounded, and log(u) * x / (u - 1) cancels that
    rounding error; where u rounds to exactly 1, log1p(x) = x to working precision.
    Needed at large nu, where m / nu can be far below the float32 epsilon. Beyond 1e15
    the correction is below one ulp and x / (u - 1) would be inf / inf, so log(u) it is.
    """
    u = 1.0 + x
    rounded_away = u - 1.0
    safe = tl.where(rounded_away == 0.0, 1.0, rounded_away)
    corrected = tl.where(x > 1e15, tl.log(u), tl.log(u) * (x / safe))
    return tl.where(rounded_away == 0.0, x, corrected)


@triton.jit
def _x_minus_log1p(x):
    """x - log(1 + x) for x > -1 without cancellation.

    For |x| < 0.1 the subtraction would lose up to log10(2 / |x|) digits, so use the series
    x^2/2 - x^3/3 + ... + x^17/17 (truncation < 2e-15 relative at |x| = 0.1); beyond it the
    subtraction loses at most a factor 20.
    """
    small = tl.minimum(tl.maximum(x, -0.1), 0.1)  # the series branch never sees a large |x|
    series = -1.0 / 17.0
    for n in tl.static_range(16, 1, -1):  # Horner: 1/n - x * (series of the higher terms)
        series = 1.0 / n - small * series
    return tl.where(tl.abs(x) < 0.1, small * small * series, x - _log1p(x))


@triton.jit
def _shift_up(x):
    """(X, n, log prod_{i<n} (x + i), sum_{i<n} 1 / (x + i)) with n = 8 if x < 8, else n = 0.

    X = x + n >= 8; lgamma(x) = lgamma(X) - log_product and psi(x) = psi(X) - reciprocal_sum.
    The product of eight factors below 16 stays below 3e8, so it cannot overflow.
    """
    shifted = x < SHIFT
    xs = tl.where(shifted, x, 1.0)  # the unused branch computes on a harmless value
    product = xs
    reciprocal_sum = 1.0 / xs
    for i in tl.static_range(1, 8):
        product = product * (xs + i)
        reciprocal_sum = reciprocal_sum + 1.0 / (xs + i)
    shift = tl.where(shifted, SHIFT, 0.0)
    return (
        x + shift,
        shift,
        tl.where(shifted, tl.log(product), 0.0),
        tl.where(shifted, reciprocal_sum, 0.0),
    )


@triton.jit
def _stirling_tail(y):
    """S(y) = lgamma(y) - (y - 1/2) log y + y - log(2 pi)/2 for y >= 8 (terms to y^-13)."""
    r = 1.0 / y
    r2 = r * r
    s = 1.0 / 156.0
    s = -691.0 / 360360.0 + r2 * s
    s = 1.0 / 1188.0 + r2 * s
    s = -1.0 / 1680.0 + r2 * s
    s = 1.0 / 1260.0 + r2 * s
    s = -1.0 / 360.0 + r2 * s
    s = 1.0 / 12.0 + r2 * s
    return s * r


@triton.jit
def _digamma_tail(y):
    """T(y) = log y - 1/(2y) - psi(y) for y >= 8 (terms to y^-14)."""
    r2 = 1.0 / (y * y)
    t = 1.0 / 12.0
    t = -691.0 / 32760.0 + r2 * t
    t = 1.0 / 132.0 + r2 * t
    t = -1.0 / 240.0 + r2 * t
    t = 1.0 / 252.0 + r2 * t
    t = -1.0 / 120.0 + r2 * t
    t = 1.0 / 12.0 + r2 * t
    return t * r2


@triton.jit
def _shifted_pair(nu, dim):
    """x = nu/2, a = D/2, both shifted: (x, a, X, Y, A, log_px, log_py, recip_x, recip_y)."""
    x = 0.5 * nu
    a = 0.5 * dim + 0.0 * nu  # as a tensor of nu's dtype
    big_x, shift_x, log_px, recip_x = _shift_up(x)
    big_y, shift_y, log_py, recip_y = _shift_up(x + a)
    exact_a = a + (shift_y - shift_x)  # Y - X without rounding: half-integers and small ints
    return x, a, big_x, big_y, exact_a, log_px, log_py, recip_x, recip_y


@triton.jit
def _student_t_normaliser(nu, dim):
    """c(nu) = lgamma((nu + D)/2) - lgamma(nu/2) - D/2 log(nu pi), elementwise in nu's dtype."""
    x, a, big_x, big_y, exact_a, log_px, log_py, _, _ = _shifted_pair(nu, dim)
    log_ratio = _log1p(exact_a / big_x)  # log(Y / X)
    # A log X - a log x is exactly 0 without shifts (A = a, X = x); small otherwise.
    lgamma_difference = (big_y - 0.5) * log_ratio + exact_a * tl.log(big_x) - exact_a
    lgamma_difference += _stirling_tail(big_y) - _stirling_tail(big_x) + log_px - log_py
    return lgamma_difference - a * tl.log(x) - a * LOG_2PI


@triton.jit
def _student_t_normaliser_dnu(nu, dim):
    """c'(nu) = (psi((nu + D)/2) - psi(nu/2) - D/nu) / 2, elementwise in nu's dtype."""
    x, a, big_x, big_y, exact_a, _, _, recip_x, recip_y = _shifted_pair(nu, dim)
    u = exact_a / big_x
    # psi(Y) - psi(X) - A/X = -(u - log1p u) + A / (2 X Y) - T(Y) + T(X);
    # A/X - a/x is exactly 0 without shifts.
    difference = -_x_minus_log1p(u) + exact_a / (2.0 * big_x * big_y) - _digamma_tail(big_y) + _digamma_tail(big_x)
    difference += (u - a / x) + recip_x - recip_y
    return 0.5 * difference

