"""The fused mixture_logpdf kernels against the float64 PyTorch reference.

Every test draws fresh random inputs (the seed is printed, so a failure can be replayed)
and compares the kernel's value and all five gradients, under a random upstream gradient,
with ``mixture_logpdf_reference`` evaluated in float64 on the very same (rounded) inputs.
Component availability is random per row, and every batch of two or more rows has a row
whose component 0 is absent and a row where only the last component is present (the
online logsumexp then starts from -inf, which must not turn into NaN).

Tolerances: values elementwise ``|a - b| <= rtol * max(|b|, 1)``; gradients normwise
``max|a - b| <= rtol * max|b|`` per tensor (a gradient entry can be 0 where its neighbours
are not, so elementwise relative error is meaningless for it). float32: 1e-5 / 1e-4;
float64: 1e-10 / 1e-9; float16 / bfloat16 inputs (loaded as they are, computed in fp32):
the value as tight as fp32, gradients rounded to the input dtype.

d/dnu is checked per element instead: d/dnu_k = sum_p g_p r_kp (q_kp / 2 + c'(nu_k)) adds
terms that cancel (to O(D^2/nu^2) at large nu, and by a factor ~300 at D = 1024, nu = 2),
so each element gets 2e-5 (float32 compute; 1e-10 float64) of the size of its own terms
(``nu_gradient_scale``), plus the rounding to the input dtype and what float64 itself
resolves (``nu_gradient_floor``). A normwise bound would let the small entries at large
nu be wrong unnoticed.

One more term for float32 compute, the conditioning of the responsibilities: r_k = exp(L_k +
log_kernel_k - log p) is a difference of terms as large as |(nu + D)/2 log q| (~1e4 for a
point 100 sigma out at nu = 1e4), which float32 holds to ~eps32 of that size, whatever the
algorithm (m itself is a float32 sum). So where that is large, the gradient tolerances grow
to 4 eps32 times it (``fp32_conditioning``; ~1e-5 for ordinary points, so no change there).
Likewise a gradient may be as far from the float64 reference as 4x what PyTorch's own
float32 evaluation of the reference gets on the same inputs (``float32_reference_error``):
near a component's mean at nu = 1e4 both lose ~5e-4 of the largest d/dmu. The previous
kernels failed these tests in ~4% of draws of the nu = 1e4 far-tail case.
"""
from __future__ import annotations

import pytest
import torch

from casd.kernels import host_math, ops
from casd.kernels.reference import mixture_logpdf_reference

# numpy evaluates both sides of the kernels' tl.where in the interpreter: overflow and
# 0 * inf in the branch not taken are expected there
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

NAMES = ("z", "mu", "log_sigma", "nu", "log_pi")
# (value rtol, gradient rtol) per dtype
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-5, 2e-3),
    torch.bfloat16: (1e-5, 1.6e-2),
}


def random_availability(gen, batch, components):
    """[B, K] bool, random, every row with one component or more; with B >= 2, row 0 has
    only its last component and row 1 lacks component 0 (when K >= 2)."""
    available = torch.rand(batch, components, generator=gen) < 0.6
    empty = ~available.any(-1)
    available[empty, torch.randint(components, (int(empty.sum()),), generator=gen)] = True
    if components > 1:
        available[0] = False
        available[0, -1] = True
        if batch > 1:
            available[1, 0] = False
            available[1, -1] = True
    return available


def random_inputs(gen, batch, points, components, dim, *, nu_range=(2.0, 12.0), z_scale=1.5,
                  near_mean=False, dtype=torch.float32, device="cpu"):
    """(z, mu, log_sigma, nu, log_pi) with random absent components (-inf log_pi)."""
    mu = torch.randn(batch, components, dim, generator=gen, dtype=torch.float64)
    log_sigma = 0.4 * torch.randn(batch, components, dim, generator=gen, dtype=torch.float64)
    low, high = nu_range
    nu = low + (high - low) * torch.rand(batch, components, generator=gen, dtype=torch.float64)
    available = random_availability(gen, batch, components)
    u = torch.randn(batch, components, generator=gen, dtype=torch.float64)
    log_pi = host_math.confidence_log_weights(u, available)
    if near_mean:  # every point within 1e-3 of the last component's mean (present in every row)
        z = mu[:, -1:] + 1e-3 * torch.randn(batch, points, dim, generator=gen, dtype=torch.float64)
    else:
        z = z_scale * torch.randn(batch, points, dim, generator=gen, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (z, mu, log_sigma, nu, log_pi)]


def fused(*inputs):
    return ops.mixture_logpdf(*inputs, backend="triton")


def with_tiles(point_tile, pack_tile):
    """The custom op with a tile budget that forces several point tiles or packed rows."""
    return lambda *inputs: torch.ops.casd.mixture_logpdf(*inputs, point_tile, pack_tile)


def kernel_and_reference(inputs, grad_out, run=fused):
    """(value, grads) of the kernel on ``inputs`` and of the float64 reference on the same values."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    value = run(*leaves)
    grads = torch.autograd.grad(value, leaves, grad_out.to(value.dtype))
    ref_leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref = mixture_logpdf_reference(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    return value, grads, ref, ref_grads


def assert_value_close(value, ref, rtol):
    err = ((value.double() - ref).abs() / ref.abs().clamp_min(1.0)).max().item()
    assert err <= rtol, f"value: relative error {err:.3e} > {rtol}"


def assert_grad_close(name, grad, ref, rtol, atol=0.0):
    assert torch.isfinite(grad).all(), f"d/d{name} has non-finite entries"
    err = (grad.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rtol * scale + atol, (
        f"d/d{name}: max error {err:.3e} > {rtol} x max|ref| {scale:.3e} + {atol:.1e}"
    )


EPS32 = torch.finfo(torch.float32).eps


def fp32_conditioning(inputs) -> float:
    """max |log-density term| that float32 responsibilities are differences of (float64)."""
    z, mu, log_sigma, nu, log_pi = (t.double() for t in inputs)
    dim = z.shape[-1]
    m = ((z[:, :, None] - mu[:, None]) * torch.exp(-log_sigma)[:, None]).square().sum(-1)  # [B, P, K]
    log_kernel = 0.5 * (nu[:, None] + dim) * torch.log1p(m / nu[:, None])
    coefficient = (log_pi + host_math.log_normaliser(nu, log_sigma)).abs()[:, None]
    terms = torch.where(torch.isfinite(coefficient), log_kernel + coefficient, 0.0)
    return terms.max().item()


def float32_reference_error(inputs, grad_out, ref_grads) -> list[float]:
    """max |error| per gradient of the reference itself evaluated in float32 (PyTorch)."""
    leaves = [t.detach().float().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(mixture_logpdf_reference(*leaves), leaves, grad_out.float())
    return [(g.double() - r).abs().max().item() for g, r in zip(grads, ref_grads)]


def nu_gradient_floor(nu, grad_out):
    """What float64 itself can resolve in d/dnu: it sums terms of size ~log(nu) per point
    (digamma, log q) that cancel to ~D^2/nu^2 at large nu, so even the float64 reference
    is only good to a few ulps of log(nu) times sum_p |grad_out|. Per element [B, K]."""
    eps64 = torch.finfo(torch.float64).eps
    return 64 * eps64 * grad_out.double().abs().sum(-1, keepdim=True) * (1 + nu.double().log())


def nu_gradient_scale(inputs, grad_out):
    """[B, K]: sum_p |g_p| r_kp (|a x - log1p x| / 2 + |c'(nu_k)|), the size of the terms whose
    sum d/dnu_k is, each in its cancellation-free form (float64)."""
    z, mu, log_sigma, nu, log_pi = (t.double() for t in inputs)
    dim = z.shape[-1]
    scaled = (z[:, :, None] - mu[:, None]) * torch.exp(-log_sigma)[:, None]
    m = scaled.square().sum(-1)  # [B, P, K]
    x = m / nu[:, None]
    log_t = host_math.log_normaliser(nu, log_sigma)[:, None] - 0.5 * (nu[:, None] + dim) * torch.log1p(x)
    log_terms = log_pi[:, None] + log_t
    r = torch.exp(log_terms - torch.logsumexp(log_terms, -1, keepdim=True)).nan_to_num(0.0)
    q = ((nu[:, None] + dim) / (nu[:, None] + m) * x - torch.log1p(x)).abs() / 2
    dc = 0.5 * (torch.digamma((nu + dim) / 2) - torch.digamma(nu / 2) - dim / nu)
    return (grad_out.double().abs()[:, :, None] * r * (q + dc.abs()[:, None])).sum(1)


NU_COMPUTE_RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}
ROUNDING = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # half an ulp of the gradient's dtype


def assert_nu_gradient_close(grad, ref, inputs, grad_out):
    """Per element: |error| <= rtol * (size of its terms) + rounding * |ref| + float64's floor."""
    assert torch.isfinite(grad).all(), "d/dnu has non-finite entries"
    compute = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    err = (grad.double() - ref).abs().cpu()
    rtol = NU_COMPUTE_RTOL[compute]
    if compute == torch.float32:
        rtol = max(rtol, 4 * EPS32 * fp32_conditioning(inputs))
    bound = (rtol * nu_gradient_scale(inputs, grad_out).cpu()
             + 2 * ROUNDING.get(grad.dtype, 0.0) * ref.abs().cpu()
             + nu_gradient_floor(inputs[3], grad_out).cpu())
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"d/dnu: an element's error is {worst:.2f}x its bound (max error {err.max():.3e})"


def check_against_reference(inputs, grad_out, dtype, run=fused):
    value_rtol, grad_rtol = TOLERANCES[dtype]
    value, grads, ref, ref_grads = kernel_and_reference(inputs, grad_out, run)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert value.shape == ref.shape
    assert_value_close(value, ref, value_rtol)
    absent = torch.isneginf(inputs[4])
    float32_errors = [0.0] * len(NAMES)
    if dtype != torch.float64:
        grad_rtol = max(grad_rtol, 4 * EPS32 * fp32_conditioning(inputs))
        float32_errors = float32_reference_error(inputs, grad_out, ref_grads)
    for name, grad, ref_grad, leaf, float32_error in zip(NAMES, grads, ref_grads, inputs, float32_errors):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        if name == "nu":
            assert_nu_gradient_close(grad, ref_grad, inputs, grad_out)
        else:
            assert_grad_close(name, grad, ref_grad, grad_rtol, atol=4 * float32_error)
        if name != "z":  # absent components: exactly zero, not NaN
            assert (grad[absent] == 0).all(), f"d/d{name} is not exactly 0 for absent components"
    return grads, ref_grads


SHAPES = [  # (B, P, K, D): B = 1, P = 1, K = 1, D = 1, non-powers of two, the model's K = 7
    (1, 1, 1, 1),
    (1, 6, 3, 5),
    (3, 1, 2, 8),
    (4, 7, 7, 13),
    (2, 28, 7, 50),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-P{}-K{}-D{}".format(*s))
def test_value_and_gradients_match_reference(gen, device, shape, dtype):
    batch, points, components, dim = shape
    inputs = random_inputs(gen, batch, points, components, dim, dtype=dtype, device=device)
    grad_out = torch.randn(batch, points, generator=gen).to(device)
    check_against_reference(inputs, grad_out, dtype)


@pytest.mark.parametrize("dim", [1, 3, 100, 120, 128, 256, 1024])
def test_dimensions_from_1_to_1024(gen, device, dim):
    """D not a multiple of 16, powers of two, and the largest D the model might use."""
    inputs = random_inputs(gen, 3, 5, 4, dim, device=device, z_scale=1.0)
    check_against_reference(inputs, torch.randn(3, 5, generator=gen).to(device), torch.float32)


EXTREMES = {
    "nu-near-2": dict(nu_range=(2.0, 2.01)),
    "nu-1e4-near-mean": dict(nu_range=(1e4, 1e4), near_mean=True),
    "nu-1e4-tails": dict(nu_range=(1e4, 1e4), z_scale=100.0),
    "nu-2-far-tails": dict(nu_range=(2.0, 3.0), z_scale=1e3),
    "mixed-nu-tails": dict(nu_range=(2.0, 1e4), z_scale=30.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", EXTREMES)
def test_extreme_degrees_of_freedom_and_tails(gen, device, case, dtype):
    inputs = random_inputs(gen, 3, 6, 4, 11, dtype=dtype, device=device, **EXTREMES[case])
    grad_out = torch.randn(3, 6, generator=gen).to(device)
    check_against_reference(inputs, grad_out, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nu", [2.01, 10.0, 1e3, 1e4])
def test_nu_gradient_per_element(gen, device, nu, dtype):
    """Each d/dnu_k against the size of its own terms (check_against_reference), at one nu
    for all components, for points spread out and points at a component's mean."""
    for near_mean in (False, True):
        inputs = random_inputs(gen, 4, 9, 5, 24, nu_range=(nu, nu), near_mean=near_mean, dtype=dtype, device=device)
        check_against_reference(inputs, torch.randn(4, 9, generator=gen).to(device), dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow inside the interpreter
@pytest.mark.parametrize("distance", [1e19, 1e25, 1e37])
def test_far_tails_give_minus_infinity_never_nan(gen, device, distance):
    """Points so far out that m overflows float32 (from |z - mu| / sigma ~ 1e19): log p = -inf
    wherever float32 arithmetic gives -inf (the float32 reference does), never NaN; the
    gradients stay finite and are exactly 0 at those points; every other point is unaffected."""
    z, mu, log_sigma, nu, log_pi = random_inputs(gen, 2, 4, 3, 6, device=device)
    z[:, 1] = distance  # every coordinate
    z[1, 3, 2] = -distance  # one coordinate
    leaves = [t.clone().requires_grad_() for t in (z, mu, log_sigma, nu, log_pi)]
    value = fused(*leaves)
    assert not torch.isnan(value).any()
    overflowed = torch.isneginf(mixture_logpdf_reference(z, mu, log_sigma, nu, log_pi))  # float32
    assert overflowed[:, 1].all()
    assert torch.equal(torch.isneginf(value), overflowed)
    reference = mixture_logpdf_reference(*(t.double() for t in (z, mu, log_sigma, nu, log_pi)))
    assert_value_close(value[~overflowed].detach(), reference[~overflowed], 1e-5)
    grads = torch.autograd.grad(value, leaves, torch.ones_like(value))
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][overflowed] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs_are_computed_in_fp32(gen, device, dtype):
    """fp16/bf16 are only loaded: the reference sees the same rounded values in float64."""
    inputs = random_inputs(gen, 3, 5, 3, 9, dtype=dtype, device=device)
    grad_out = torch.randn(3, 5, generator=gen).to(device)
    check_against_reference(inputs, grad_out, dtype)


def test_mixed_input_dtypes(gen, device):
    z, mu, log_sigma, nu, log_pi = random_inputs(gen, 2, 4, 3, 6, device=device)
    inputs = [z.half(), mu, log_sigma.bfloat16(), nu, log_pi]
    value, grads, ref, ref_grads = kernel_and_reference(inputs, torch.ones(2, 4, device=device))
    assert value.dtype == torch.float32
    assert_value_close(value, ref, 1e-5)
    assert [g.dtype for g in grads] == [t.dtype for t in inputs]


@pytest.mark.parametrize(
    "tiles",
    [(32, 32), (32, 128)],
    ids=["1-row-4-points-per-program", "4-rows-4-points-per-program"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_several_point_tiles_and_packed_rows(gen, device, tiles, dtype):
    """P split over programs (per-tile partial gradients) and rows packed per program."""
    inputs = random_inputs(gen, 3, 11, 3, 7, dtype=dtype, device=device)  # partial last tiles
    grad_out = torch.randn(3, 11, generator=gen).to(device)
    check_against_reference(inputs, grad_out, dtype, run=with_tiles(*tiles))


def test_non_contiguous_inputs_are_accepted(gen, device):
    z, mu, log_sigma, nu, log_pi = random_inputs(gen, 3, 5, 4, 6, device=device)
    strided = [
        z.transpose(1, 2).contiguous().transpose(1, 2),  # same values, [P, D] strides swapped
        torch.stack([mu, mu], dim=-1)[..., 0],
        log_sigma.transpose(0, 1).contiguous().transpose(0, 1),
        nu.t().contiguous().t(),
        log_pi,
    ]
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    expected = fused(z, mu, log_sigma, nu, log_pi)
    torch.testing.assert_close(fused(*strided), expected, rtol=0, atol=0)


def test_bitwise_deterministic(gen, device):
    inputs = random_inputs(gen, 4, 9, 5, 7, device=device)
    grad_out = torch.randn(4, 9, generator=gen).to(device)
    run = with_tiles(32, 64)
    first = kernel_and_reference(inputs, grad_out, run)
    second = kernel_and_reference(inputs, grad_out, run)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


def test_every_output_element_is_written(gen, device, poison_new_tensors):
    """Buffers the launcher allocates start as NaN: any element the kernels skip shows up."""
    for run in (fused, with_tiles(32, 64)):
        inputs = random_inputs(gen, 3, 7, 3, 5, device=device)
        grad_out = torch.randn(3, 7, generator=gen).to(device)
        value, grads, ref, ref_grads = kernel_and_reference(inputs, grad_out, run)
        assert torch.isfinite(value).all()
        assert all(torch.isfinite(g).all() for g in grads)


def test_autocast_inputs_from_lower_precision_layers(gen, device):
    """Under autocast the parameters come out of bf16/fp16 matmuls; the op still returns fp32."""
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    batch, points, components, dim = 3, 4, 3, 6
    features = torch.randn(batch, 8, generator=gen).to(device)
    head = torch.nn.Linear(8, components * dim * 2 + components).to(device)
    z = torch.randn(batch, points, dim, generator=gen).to(device)
    available = torch.ones(batch, components, dtype=torch.bool, device=device)
    available[0, 1] = False
    with torch.autocast(device_type=device.type, dtype=amp_dtype):
        out = head(features)
        mu = out[:, : components * dim].reshape(batch, components, dim)
        log_sigma = 0.1 * out[:, components * dim : 2 * components * dim].reshape(batch, components, dim)
        nu = 2.0 + torch.nn.functional.softplus(out[:, -components:])
        log_pi = host_math.confidence_log_weights(torch.zeros_like(nu.float()), available)
        assert mu.dtype == amp_dtype
        log_p = fused(z, mu, log_sigma, nu, log_pi)
    assert log_p.dtype == torch.float32
    expected = mixture_logpdf_reference(*(t.detach().double() for t in (z, mu, log_sigma, nu, log_pi)))
    assert_value_close(log_p.detach(), expected, 1e-5)
    log_p.sum().backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


def test_row_with_every_component_absent(gen, device, forbid_kernel_launch):
    """Without validation: log p = -inf for that row (an empty mixture has density 0) and
    zero gradients, no NaN anywhere; with validate=True: an error, before any launch."""
    z, mu, log_sigma, nu, log_pi = random_inputs(gen, 3, 3, 3, 4, device=device)
    log_pi[1] = float("-inf")
    leaves = [t.clone().requires_grad_() for t in (z, mu, log_sigma, nu, log_pi)]
    value = fused(*leaves)
    assert torch.isneginf(value[1]).all() and torch.isfinite(value[[0, 2]]).all()
    grads = torch.autograd.grad(value, leaves, torch.ones_like(value))
    assert all(torch.isfinite(g).all() and (g[1] == 0).all() for g in grads)

    from casd.kernels.fused import mixture_logpdf as module

    forbid_kernel_launch(module, "_mixture_logpdf_forward_kernel")
    with pytest.raises(ValueError, match="every component is absent"):
        ops.mixture_logpdf(z, mu, log_sigma, nu, log_pi, backend="triton", validate=True)


def test_wrong_dtype_and_device_are_refused(gen, device):
    inputs = random_inputs(gen, 2, 3, 2, 4, device=device)
    with pytest.raises(TypeError, match="log_pi must be float16, bfloat16, float32 or float64"):
        fused(*inputs[:4], inputs[4].long())
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        fused(inputs[0].to("meta"), *inputs[1:])
