"""kernels/fused/special.py: the in-kernel lgamma and digamma differences against mpmath.

The kernels compute the Student-t normaliser c(nu) = lgamma((nu+D)/2) - lgamma(nu/2) -
D/2 log(nu pi) and c'(nu) themselves, in plain tl ops, so that each operation is one launch.
Here both run elementwise through a small test kernel and are compared with 50-digit
mpmath values (float64 scipy would not do as the reference: its lgamma difference itself
cancels to ~1e-11 at nu = 1e4), over nu from 0.05 to 3e4, across both recurrence-shift
boundaries (nu/2 and (nu+D)/2 near 8), and D from 1 to 1024.

Errors are measured relative to the size of the terms that a cancellation-free evaluation
adds (``exact``): for c that is (x + a) log1p(a/x) and a (1 + |log x|), not lgamma(x) itself
(which is what the naive formula cancels); for c' it is a / (2x(x + a)) and a^2/x^2, the
size of its leading terms. Measured worst cases (2 cores, interpreter): float64 c 4e-16,
c' 2e-13; float32 c 2e-6, c' 9e-6 (D = 1, small nu), 5e-7 for D >= 15.
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from casd.kernels.fused.special import (  # noqa: E402
    _log1p,
    _student_t_normaliser,
    _student_t_normaliser_dnu,
    _x_minus_log1p,
)

DIMS = (1, 2, 3, 15, 16, 17, 64, 100, 128, 256, 1024)


@triton.jit
def _elementwise_kernel(x_ptr, c_ptr, dc_ptr, log1p_ptr, xm_ptr, N, D, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=1.0)
    tl.store(c_ptr + offs, _student_t_normaliser(x, D), mask=mask)
    tl.store(dc_ptr + offs, _student_t_normaliser_dnu(x, D), mask=mask)
    tl.store(log1p_ptr + offs, _log1p(x), mask=mask)
    tl.store(xm_ptr + offs, _x_minus_log1p(x), mask=mask)


def run(x: torch.Tensor, dim: int) -> dict[str, np.ndarray]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = x.to(device)
    outs = [torch.empty_like(x) for _ in range(4)]
    _elementwise_kernel[(1,)](x, *outs, x.numel(), dim, BLOCK=triton.next_power_of_2(x.numel()))
    return dict(zip(("c", "dc", "log1p", "x_minus_log1p"), (o.double().cpu().numpy() for o in outs)))


def exact(nu: float, dim: int) -> tuple[float, float, float]:
    """(c, c', scale) in 50-digit arithmetic; scale is the largest term a cancellation-free
    evaluation adds: |c| or a * |log1p(a / x)| * (x + a) style terms, whichever is larger."""
    with mpmath.workdps(50):
        x, a = mpmath.mpf(nu) / 2, mpmath.mpf(dim) / 2
        c = mpmath.loggamma(x + a) - mpmath.loggamma(x) - a * mpmath.log(2 * mpmath.pi * x)
        dc = (mpmath.digamma(x + a) - mpmath.digamma(x) - a / x) / 2
        scale = max(abs(c), (x + a) * mpmath.log1p(a / x), a * (1 + abs(mpmath.log(x))), 1)
        # c' is O(a^2 / x^2) for large x and O(1 / x) for small x: its terms have that size
        dscale = max(abs(dc), a / (2 * x * (x + a)), a * a / (x * x))
        return float(c), float(dc), float(scale), float(dscale)


NUS = np.concatenate([
    np.geomspace(0.05, 3e4, 90),
    [2.0, 2.01, 15.99, 16.0, 16.01, 1e3, 1e4],  # the model's nu_min, the shift boundary at nu = 16
])


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-13), (torch.float32, 3e-6)])
@pytest.mark.parametrize("dim", DIMS)
def test_normaliser_and_its_nu_derivative_match_mpmath(dim, dtype, rtol):
    # also the second boundary: (nu + D)/2 near 8
    nus = np.concatenate([NUS, [16.0 - dim + 0.01, 16.0 - dim + 1e-3]]) if dim < 16 else NUS
    nus = nus[nus > 0]
    got = run(torch.tensor(nus, dtype=dtype), dim)
    worst_c = worst_dc = 0.0
    for i, nu in enumerate(nus):
        c, dc, scale, dscale = exact(float(torch.tensor(nu, dtype=dtype)), dim)
        worst_c = max(worst_c, abs(got["c"][i] - c) / scale)
        worst_dc = max(worst_dc, abs(got["dc"][i] - dc) / dscale)
    print(f"D={dim} {dtype}: c error {worst_c:.2e}, c' error {worst_dc:.2e} (relative to term scale)")
    assert worst_c <= rtol, f"c(nu): relative error {worst_c:.2e} > {rtol}"
    assert worst_dc <= 10 * rtol, f"c'(nu): relative error {worst_dc:.2e} > {10 * rtol}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter: unselected where branches
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 4e-16), (torch.float32, 2e-7)])
def test_log1p_and_x_minus_log1p(dtype, rtol):
    x = torch.tensor(
        [-0.9, -0.5, -0.1001, -0.0999, -1e-3, -1e-9, 0.0, 1e-30, 1e-12, 1e-7, 1e-3, 0.0999, 0.1001, 0.5,
         1.0, 3.0, 1e3, 1e10, 1e16, 1e30, float("inf")],
        dtype=dtype,
    )
    got = run(x, 1)
    tiny = torch.finfo(dtype).tiny  # below it the result underflows to 0, as it should
    for i, value in enumerate(x.tolist()):
        if math.isinf(value):
            assert got["log1p"][i] == math.inf
            continue
        with mpmath.workdps(50):
            ref_log1p = float(mpmath.log1p(value))
            ref_xm = float(value - mpmath.log1p(value))
        assert abs(got["log1p"][i] - ref_log1p) <= 4 * rtol * max(abs(ref_log1p), tiny), (value, got["log1p"][i])
        if abs(value) < 1e15:
            assert abs(got["x_minus_log1p"][i] - ref_xm) <= 30 * rtol * max(abs(ref_xm), tiny), value
