"""The fused student_t_rsample kernels: exactness given the noise, repeatability, and the
distribution of what they draw.

Given the same eps the kernel must reproduce ``student_t_rsample_reference`` up to the
last-ulp differences of exp implementations, with the same gradients. With a seed, the
noise comes from Triton's Philox stream: repeatable bit for bit, different across seeds,
regenerated identically in the backward, and standard normal. Together with
``gamma_scales`` the draws must follow the D-variate Student-t of formulation §3 (one gamma scale
shared by all D coordinates), checked with fixed seeds so the statistical tests cannot
flake.
"""
from __future__ import annotations

import math

import pytest
import torch

from casd.kernels import host_math, ops
from casd.kernels.launch import TileConfig
from casd.kernels.reference import student_t_rsample_reference
from casd.kernels.runtime import triton_ops

stats = pytest.importorskip("scipy.stats")


def random_inputs(gen, batch, components, samples, dim, *, dtype=torch.float32, device="cpu"):
    mu = torch.randn(batch, components, dim, generator=gen)
    log_sigma = 0.5 * torch.randn(batch, components, dim, generator=gen)
    w = 0.3 + 2.0 * torch.rand(batch, components, samples, generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (mu, log_sigma, w)]


def launcher(device, tiles=None):
    module = triton_ops(device)
    return (
        lambda mu, log_sigma, w, seed: module.student_t_rsample_triton(mu, log_sigma, w, seed, tiles=tiles),
        lambda mu, log_sigma, w, eps: module.student_t_rsample_with_noise_triton(mu, log_sigma, w, eps, tiles=tiles),
    )


def value_and_grads(fn, inputs, extra, grad_z):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    z = fn(*leaves, extra)
    return z, torch.autograd.grad(z, leaves, grad_z.to(z.dtype))


def assert_normwise_close(name, actual, expected, rtol):
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rtol * scale, f"{name}: max error {err:.3e} > {rtol} x max|ref| {scale:.3e}"


SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 2, 4, 16), (1, 7, 6, 33), (2, 2, 9, 3)]  # (B, K, S, D)
TILES = [None, TileConfig(point_tile=64, pack_tile=32)]  # default, and several programs


@pytest.mark.parametrize("tiles", TILES, ids=["default-tiles", "small-tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-K{}-S{}-D{}".format(*s))
def test_given_noise_matches_reference_with_gradients(gen, device, shape, dtype, tiles):
    batch, components, samples, dim = shape
    inputs = random_inputs(gen, batch, components, samples, dim, dtype=dtype, device=device)
    eps = torch.randn(batch, components, samples, dim, generator=gen).to(device=device, dtype=dtype)
    grad_z = torch.randn(eps.shape, generator=gen).to(device)
    _, with_noise = launcher(device, tiles)
    z, grads = value_and_grads(with_noise, inputs, eps, grad_z)
    ref, ref_grads = value_and_grads(student_t_rsample_reference, [t.double() for t in inputs], eps.double(), grad_z)
    assert z.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ulps = 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(z.double(), ref, rtol=ulps, atol=ulps * ref.abs().max().item())
    for name, grad, ref_grad, leaf in zip(("mu", "log_sigma", "w"), grads, ref_grads, inputs):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
        assert_normwise_close(name, grad, ref_grad, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs_give_fp32_samples(gen, device, dtype):
    inputs = random_inputs(gen, 2, 3, 5, 6, dtype=dtype, device=device)
    eps = torch.randn(2, 3, 5, 6, generator=gen).to(device)
    _, with_noise = launcher(device)
    z, grads = value_and_grads(with_noise, inputs, eps, torch.ones_like(eps))
    assert z.dtype == torch.float32
    ref = student_t_rsample_reference(*(t.double() for t in inputs), eps.double())
    torch.testing.assert_close(z.double(), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    assert [g.dtype for g in grads] == [dtype] * 3


def test_seeded_draws_repeat_bitwise_and_differ_across_seeds(gen, device):
    inputs = random_inputs(gen, 2, 3, 7, 9, device=device)
    grad_z = torch.randn(2, 3, 7, 9, generator=gen).to(device)
    seeded, _ = launcher(device, TileConfig(point_tile=64, pack_tile=32))
    z1, grads1 = value_and_grads(seeded, inputs, 123, grad_z)
    z2, grads2 = value_and_grads(seeded, inputs, 123, grad_z)
    assert torch.equal(z1, z2)
    assert all(torch.equal(a, b) for a, b in zip(grads1, grads2))
    z3 = seeded(*inputs, 124)
    assert (z3 != z1).float().mean().item() > 0.99


def test_the_tiling_does_not_change_the_stream(gen, device):
    """eps is keyed by the element, not by the program that draws it."""
    inputs = random_inputs(gen, 3, 5, 6, 10, device=device)
    default, _ = launcher(device)
    small, _ = launcher(device, TileConfig(point_tile=16, pack_tile=16))
    assert torch.equal(default(*inputs, 7), small(*inputs, 7))


def test_backward_regenerates_the_forward_noise(gen, device):
    """The seeded gradients equal the given-noise gradients for the noise the forward drew."""
    inputs = random_inputs(gen, 2, 3, 6, 11, device=device)
    grad_z = torch.randn(2, 3, 6, 11, generator=gen).to(device)
    seeded, with_noise = launcher(device)
    z, grads = value_and_grads(seeded, inputs, 99, grad_z)
    mu, log_sigma, w = inputs
    eps = (z - mu[:, :, None]) / (log_sigma.exp()[:, :, None] * w[..., None])
    _, expected = value_and_grads(with_noise, inputs, eps, grad_z)
    for name, a, b in zip(("mu", "log_sigma", "w"), grads, expected):
        assert_normwise_close(name, a, b, 1e-5)


def test_every_output_element_is_written(gen, device, poison_new_tensors):
    inputs = random_inputs(gen, 3, 2, 5, 7, device=device)
    for tiles in (None, TileConfig(point_tile=16, pack_tile=16)):
        seeded, _ = launcher(device, tiles)
        z, grads = value_and_grads(seeded, inputs, 5, torch.randn(3, 2, 5, 7, generator=gen).to(device))
        assert torch.isfinite(z).all() and all(torch.isfinite(g).all() for g in grads)


def test_non_contiguous_inputs_are_accepted(gen, device):
    mu, log_sigma, w = random_inputs(gen, 2, 3, 5, 4, device=device)
    strided = (mu.transpose(0, 1).contiguous().transpose(0, 1), torch.stack([log_sigma] * 2, -1)[..., 0], w)
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    seeded, _ = launcher(device)
    assert torch.equal(seeded(*strided, 3), seeded(mu, log_sigma, w, 3))


def test_public_entry_point_and_bad_seed(gen, device):
    mu, log_sigma, w = random_inputs(gen, 2, 2, 3, 4, device=device)
    z = ops.student_t_rsample(mu, log_sigma, w, 11, backend="triton")
    assert z.shape == (2, 2, 3, 4) and torch.equal(z, launcher(device)[0](mu, log_sigma, w, 11))
    with pytest.raises(ValueError, match="seed must be in"):
        ops.student_t_rsample(mu, log_sigma, w, -1, backend="triton")


def test_counter_space_overflow_is_refused_before_launch():
    from casd.kernels.student_t_rsample import _launch_config

    huge = torch.empty(2**16, 2**6, 2**10, device="meta")  # B*K*D = 2^32 counters at S <= 4
    with pytest.raises(ValueError, match="32-bit counter space"):
        _launch_config(huge, 4, TileConfig(point_tile=1024, pack_tile=1024))


# ------------------------------------------------------------------ distribution of the draws

SEED = 20240611


@pytest.fixture(scope="module")
def draws():
    """Fixed-seed draws: noise-quality checks need only the seeded kernel; the Student-t
    checks combine it with gamma_scales as the model does."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, components, samples, dim = 4, 3, 50, 33  # S not a multiple of 4: a partial quad
    gen = torch.Generator().manual_seed(SEED)
    mu = torch.randn(batch, components, dim, generator=gen).to(device)
    log_sigma = 0.5 * torch.randn(batch, components, dim, generator=gen).to(device)
    nu = torch.tensor([2.5, 5.0, 30.0]).repeat(batch, 1).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(SEED)
        w = host_math.gamma_scales(nu, samples)
    z = ops.student_t_rsample(mu, log_sigma, w, SEED, backend="triton")
    standard = (z - mu[:, :, None]) / log_sigma.exp()[:, :, None]  # t-distributed coordinates
    eps = standard / w[..., None]
    return dict(eps=eps.double().cpu(), standard=standard.double().cpu(), nu=nu.double().cpu(), dim=dim)


def test_noise_is_standard_normal(draws):
    eps = draws["eps"].flatten()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / math.sqrt(n)
    assert abs(eps.var().item() - 1) < 5 * math.sqrt(2 / n)
    kurtosis = ((eps - eps.mean()) ** 4).mean().item() / eps.var().item() ** 2
    assert abs(kurtosis - 3) < 5 * math.sqrt(24 / n)
    assert stats.kstest(eps.numpy(), "norm").pvalue > 1e-4


def test_noise_is_uncorrelated_across_lanes_coordinates_and_rows(draws):
    eps = draws["eps"]  # [B, K, S, D]
    limit = 5 / math.sqrt(eps[:, :, 1:].numel())

    def corr(a, b):
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    assert abs(corr(eps[:, :, 1:], eps[:, :, :-1])) < limit  # neighbouring samples: other Philox lanes
    assert abs(corr(eps[..., 1:], eps[..., :-1])) < limit  # neighbouring coordinates: other counters
    assert abs(corr(eps[:, 1:], eps[:, :-1])) < limit  # neighbouring components


def test_draws_follow_the_multivariate_student_t(draws):
    """Marginals t(nu); the scaled squared norm m / D is F(D, nu) only if one gamma scale
    is shared by the D coordinates (independent scales would concentrate it near 1)."""
    standard, nu, dim = draws["standard"], draws["nu"], draws["dim"]
    nu_per_coordinate = nu[:, :, None, None].expand_as(standard)
    marginal_u = stats.t.cdf(standard.numpy(), nu_per_coordinate.numpy())
    assert stats.kstest(marginal_u.ravel(), "uniform").pvalue > 1e-4
    scaled_norm = (standard**2).sum(-1) / dim  # [B, K, S]
    nu_per_sample = nu[:, :, None].expand_as(scaled_norm)
    norm_u = stats.f.cdf(scaled_norm.numpy(), dim, nu_per_sample.numpy())
    assert stats.kstest(norm_u.ravel(), "uniform").pvalue > 1e-4
