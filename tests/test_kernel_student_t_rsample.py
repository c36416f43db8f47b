"""The fused student_t_rsample kernels: exactness given the noise, the keyed noise stream, and
the distribution of what they draw.

Given the same eps the kernel must reproduce ``student_t_rsample_reference`` up to the
last-ulp differences of exp implementations, with the same gradients. With a key, the
noise is the Philox stream that ``casd.kernels.philox.keyed_normal`` computes in PyTorch:
the kernel must match it element by element (which pins the counter layout: a wrong lane
or row stride shows up as a wrong element), repeat bit for bit, regenerate it in the
backward, and give a row the same noise whatever else is in the batch when keys are per
row. Together with ``gamma_scales`` the draws must follow the D-variate Student-t of
formulation §3 (one gamma scale shared by all D coordinates), checked with fixed keys so
the statistical tests cannot flake.
"""
from __future__ import annotations

import math

import pytest
import torch

from casd.kernels import host_math, ops, philox
from casd.kernels.reference import student_t_rsample_reference

stats = pytest.importorskip("scipy.stats")


def random_inputs(gen, batch, components, samples, dim, *, dtype=torch.float32, device="cpu"):
    mu = torch.randn(batch, components, dim, generator=gen)
    log_sigma = 0.5 * torch.randn(batch, components, dim, generator=gen)
    scales = 0.3 + 2.0 * torch.rand(batch, components, samples, generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (mu, log_sigma, scales)]


def key_tensor(seed, device):
    return seed.to(device) if torch.is_tensor(seed) else torch.tensor(seed, dtype=torch.int64, device=device)


def launcher(device, tiles=(0, 0)):
    """(keyed, with_noise): the custom op with a key (int or int64 tensor), or with eps given."""
    def keyed(mu, log_sigma, scales, seed):
        return torch.ops.casd.student_t_rsample(mu, log_sigma, scales, key_tensor(seed, device), None, *tiles)

    def with_noise(mu, log_sigma, scales, eps):
        key = torch.zeros((), dtype=torch.int64, device=device)
        return torch.ops.casd.student_t_rsample(mu, log_sigma, scales, key, eps, *tiles)

    return keyed, with_noise


def value_and_grads(fn, inputs, extra, grad_z):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    z = fn(*leaves, extra)
    return z, torch.autograd.grad(z, leaves, grad_z.to(z.dtype))


def assert_normwise_close(name, actual, expected, rtol):
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rtol * scale, f"{name}: max error {err:.3e} > {rtol} x max|ref| {scale:.3e}"


SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 2, 4, 16), (1, 7, 6, 33), (2, 2, 9, 3)]  # (B, K, S, D)
TILES = [(0, 0), (64, 32)]  # default, and several programs


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
    for name, grad, ref_grad, leaf in zip(("mu", "log_sigma", "scales"), grads, ref_grads, inputs):
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


# ------------------------------------------------------------------ the keyed noise stream

KEYS = {
    "one-key": lambda batch: 20240611,
    "64-bit-key": lambda batch: torch.tensor(-0x5DEECE66D2B7E151),  # high bits set
    "key-per-row": lambda batch: torch.tensor([(7 + 3 * b) << 40 | b for b in range(batch)]),
}


@pytest.mark.parametrize("keys", KEYS)
@pytest.mark.parametrize(
    "shape, tiles",
    [(shape, (0, 0)) for shape in SHAPES] + [((2, 3, 5, 7), (64, 32)), ((3, 7, 64, 5), (0, 0))],
    ids=lambda v: "B{}-K{}-S{}-D{}".format(*v) if len(v) == 4 else "tiles-{}-{}".format(*v),
)
def test_noise_is_the_philox_stream_element_by_element(gen, device, shape, tiles, keys):
    """The kernel's eps equals philox.keyed_normal's at every (b, k, s, d): Philox words are
    exact integers, so any counter-layout mistake (lane, quad, component or row stride)
    moves values to other elements; Box-Muller leaves last-ulp differences of log/sin/cos."""
    batch, components, samples, dim = shape
    mu, log_sigma, scales = random_inputs(gen, batch, components, samples, dim, device=device)
    seed = key_tensor(KEYS[keys](batch), device)
    keyed, _ = launcher(device, tiles)
    z = keyed(mu, log_sigma, scales, seed)
    eps = (z - mu[:, :, None]) / (log_sigma.exp()[:, :, None] * scales[..., None])
    expected = philox.keyed_normal(seed, batch, components, samples, dim)
    torch.testing.assert_close(eps, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dim", [3, 100, 120, 256, 1024])
def test_dimensions_up_to_1024(gen, device, dim):
    """Keyed noise, values and gradients for D not a multiple of 16 and up to 1024."""
    inputs = random_inputs(gen, 2, 3, 5, dim, device=device)
    grad_z = torch.randn(2, 3, 5, dim, generator=gen).to(device)
    keyed, _ = launcher(device)
    z, grads = value_and_grads(keyed, inputs, 17, grad_z)
    eps = philox.keyed_normal(key_tensor(17, device), 2, 3, 5, dim).to(device)
    ref, ref_grads = value_and_grads(student_t_rsample_reference, [t.double() for t in inputs], eps.double(), grad_z)
    torch.testing.assert_close(z.double(), ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())
    for name, grad, ref_grad in zip(("mu", "log_sigma", "scales"), grads, ref_grads):
        assert_normwise_close(name, grad, ref_grad, 2e-5)


def test_both_backends_draw_the_same_noise(gen, device):
    inputs = random_inputs(gen, 3, 4, 6, 10, device=device)
    for seed in (5, torch.tensor([11, 2**62 + 3, -7], device=device)):
        fused = ops.student_t_rsample(*inputs, seed, backend="triton")
        reference = ops.student_t_rsample(*inputs, seed, backend="torch")
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_keyed_draws_repeat_bitwise_and_differ_across_keys(gen, device):
    inputs = random_inputs(gen, 2, 3, 7, 9, device=device)
    grad_z = torch.randn(2, 3, 7, 9, generator=gen).to(device)
    keyed, _ = launcher(device, (64, 32))
    z1, grads1 = value_and_grads(keyed, inputs, 123, grad_z)
    z2, grads2 = value_and_grads(keyed, inputs, 123, grad_z)
    assert torch.equal(z1, z2)
    assert all(torch.equal(a, b) for a, b in zip(grads1, grads2))
    for other in (124, 123 + 2**32, 123 + 2**61):  # low word, high word, bit 61
        assert (keyed(*inputs, other) != z1).float().mean().item() > 0.99, other


def test_the_tiling_does_not_change_the_stream(gen, device):
    """eps is keyed by the element, not by the program that draws it."""
    inputs = random_inputs(gen, 3, 5, 6, 10, device=device)
    default, _ = launcher(device)
    small, _ = launcher(device, (16, 16))
    assert torch.equal(default(*inputs, 7), small(*inputs, 7))


def test_a_row_with_its_own_key_draws_the_same_noise_in_any_batch(gen, device):
    """Per-row keys: row b's draws depend on its key and parameters only (not on its place
    in the batch or on the other rows), as distributed training needs."""
    mu, log_sigma, scales = random_inputs(gen, 5, 3, 6, 7, device=device)
    keys = torch.tensor([101, 202, 303, 404, 505], device=device)
    keyed, _ = launcher(device)
    whole = keyed(mu, log_sigma, scales, keys)
    order = torch.tensor([3, 0, 4], device=device)
    part = keyed(mu[order], log_sigma[order], scales[order], keys[order])
    assert torch.equal(part, whole[order])
    one = keyed(mu[2:3], log_sigma[2:3], scales[2:3], keys[2:3])
    assert torch.equal(one, whole[2:3])


def test_backward_regenerates_the_forward_noise(gen, device):
    """The keyed gradients equal the given-noise gradients for the noise the forward drew."""
    inputs = random_inputs(gen, 2, 3, 6, 11, device=device)
    grad_z = torch.randn(2, 3, 6, 11, generator=gen).to(device)
    keyed, with_noise = launcher(device)
    for seed in (99, torch.tensor([5, 6])):
        z, grads = value_and_grads(keyed, inputs, seed, grad_z)
        mu, log_sigma, scales = inputs
        eps = (z - mu[:, :, None]) / (log_sigma.exp()[:, :, None] * scales[..., None])
        _, expected = value_and_grads(with_noise, inputs, eps, grad_z)
        for name, a, b in zip(("mu", "log_sigma", "scales"), grads, expected):
            assert_normwise_close(name, a, b, 1e-5)


def test_every_output_element_is_written(gen, device, poison_new_tensors):
    inputs = random_inputs(gen, 3, 2, 5, 7, device=device)
    for tiles in TILES + [(16, 16)]:
        keyed, _ = launcher(device, tiles)
        z, grads = value_and_grads(keyed, inputs, 5, torch.randn(3, 2, 5, 7, generator=gen).to(device))
        assert torch.isfinite(z).all() and all(torch.isfinite(g).all() for g in grads)


def test_non_contiguous_inputs_are_accepted(gen, device):
    mu, log_sigma, scales = random_inputs(gen, 2, 3, 5, 4, device=device)
    strided = (mu.transpose(0, 1).contiguous().transpose(0, 1), torch.stack([log_sigma] * 2, -1)[..., 0], scales)
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    keyed, _ = launcher(device)
    assert torch.equal(keyed(*strided, 3), keyed(mu, log_sigma, scales, 3))


def test_public_entry_point_and_bad_seeds(gen, device):
    mu, log_sigma, scales = random_inputs(gen, 2, 2, 3, 4, device=device)
    z = ops.student_t_rsample(mu, log_sigma, scales, 11, backend="triton")
    assert z.shape == (2, 2, 3, 4) and torch.equal(z, launcher(device)[0](mu, log_sigma, scales, 11))
    with pytest.raises(ValueError, match="seed must be in"):
        ops.student_t_rsample(mu, log_sigma, scales, -1, backend="triton")
    with pytest.raises(TypeError, match="int64"):
        ops.student_t_rsample(mu, log_sigma, scales, torch.tensor([1.0]), backend="triton")
    with pytest.raises(ValueError, match="one per row"):
        ops.student_t_rsample(mu, log_sigma, scales, torch.tensor([1, 2, 3]), backend="triton")


def test_counter_space_overflow_is_refused_before_launch():
    from casd.kernels.fused.launch import TileConfig
    from casd.kernels.fused.student_t_rsample import rsample_launch

    with pytest.raises(ValueError, match="32-bit counter word"):
        rsample_launch(2, 2**12, 4, 2**20, TileConfig(point_tile=1 << 20, pack_tile=1 << 20, max_block_d=1 << 20))


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


@pytest.mark.parametrize("keys", ["one-key", "key-per-row"])
def test_all_pairs_of_streams_are_distinct_and_uncorrelated(device, keys):
    """S = 64 samples of every component: each pair of sample streams (s, s'), pooled over
    rows, components and coordinates, is uncorrelated; so is each pair of rows; and no two
    of the B*K*S noise vectors are equal (a lost lane or quad stride would repeat them)."""
    batch, components, samples, dim = 16, 7, 64, 64
    mu = torch.zeros(batch, components, dim, device=device)
    scales = torch.ones(batch, components, samples, device=device)
    seed = KEYS[keys](batch)
    eps = ops.student_t_rsample(mu, mu, scales, key_tensor(seed, device), backend="triton").double().cpu()
    vectors = eps.reshape(-1, dim)
    assert torch.unique(vectors, dim=0).shape[0] == vectors.shape[0], "repeated noise vectors"
    for streams in (eps.permute(2, 0, 1, 3).reshape(samples, -1), eps.reshape(batch, -1)):
        n, length = streams.shape
        corr = torch.corrcoef(streams)
        off_diagonal = corr[~torch.eye(n, dtype=torch.bool)].abs().max().item()
        # the largest of n(n-1)/2 null correlations stays below sqrt(2 ln(n^2)) / sqrt(length) + margin
        limit = (math.sqrt(2 * math.log(n * n)) + 1.5) / math.sqrt(length)
        assert off_diagonal < limit, f"{n} streams: max |corr| {off_diagonal:.3f} >= {limit:.3f}"
