"""A fused operation stays fused: at most 3 device operations and no host sync each way.

``casd.kernels.op_count.OpCounter`` counts the ATen operations that touch tensor data (views
and allocations excluded), the Triton launches, and every read of tensor data by the host
(``.item()``, ``.tolist()``, data-dependent shapes, GPU-to-CPU copies). The counts do not
depend on B, so a small batch at the target K = 7, S = 4 (P = 28), D = 128 shows what a
GPU would see at B = 4096. Measured before this test existed (commit c659f09): forward /
backward 23 / 17 device ops and 1 / 0 host syncs for mixture_logpdf, 46 / 21 and 2 / 0 for
consistency_distillation, 1 / 1 and 0 / 0 for student_t_rsample.
"""
from __future__ import annotations

import pytest
import torch

from casd.kernels import host_math, ops
from casd.kernels.op_count import OpCounter
from casd.layers import ConfidenceMixture, ConsistencyDistillationLoss, StudentTSampler

B, K, S, D = 4, 7, 4, 128
P = K * S
TARGET = 3  # device operations per op and direction, at most


def mixture(gen, device, requires_grad, dtype=torch.float32):
    mu = torch.randn(B, K, D, generator=gen)
    log_sigma = 0.3 * torch.randn(B, K, D, generator=gen)
    nu = 2.0 + 5.0 * torch.rand(B, K, generator=gen)
    available = torch.rand(B, K, generator=gen) < 0.7
    available[:, -1] = True
    log_pi = host_math.confidence_log_weights(torch.randn(B, K, generator=gen), available)
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (mu, log_sigma, nu, log_pi)]


def count(forward, inputs):
    """(forward counts, backward counts) of one call and its backward under a random cotangent."""
    with OpCounter() as fwd:
        out = forward()
    out = out[0] if isinstance(out, tuple) else out
    cotangent = torch.randn_like(out)
    with OpCounter() as bwd:
        torch.autograd.grad(out, inputs, cotangent)
    return fwd, bwd


def assert_fused(name, counts, launches=1):
    print(f"{name}: {counts}")
    assert counts.host_syncs == 0, f"{name}: host syncs {counts}"
    assert counts.triton_launches == launches, f"{name}: {counts}"
    assert counts.device_ops <= TARGET, f"{name}: more than {TARGET} device ops: {counts}"


@pytest.fixture
def warm(device):
    """The first call of a process loads the kernels (and may warn); count from the second."""
    z, mu = torch.zeros(1, 2, 3, device=device), torch.zeros(1, 1, 3, device=device)
    nu, log_pi = torch.full((1, 1), 3.0, device=device), torch.zeros(1, 1, device=device)
    ops.mixture_logpdf(z, mu, mu, nu, log_pi, backend="triton")


def test_mixture_logpdf_is_one_launch_each_way(gen, device, warm):
    params = mixture(gen, device, True)
    z = torch.randn(B, P, D, generator=gen).to(device).requires_grad_()
    fwd, bwd = count(lambda: ops.mixture_logpdf(z, *params, backend="triton"), [z, *params])
    assert_fused("mixture_logpdf forward", fwd)
    assert_fused("mixture_logpdf backward", bwd)
    assert fwd.device_ops == bwd.device_ops == 1


def test_consistency_distillation_is_one_launch_and_a_mean_forward_one_product_backward(gen, device, warm):
    teacher, student = mixture(gen, device, False), mixture(gen, device, True)
    z = torch.randn(B, P, D, generator=gen).to(device)
    omega = torch.full((B, P), 1.0 / P, device=device)
    row_weights = torch.ones(B, device=device)
    fwd, bwd = count(
        lambda: ops.consistency_distillation(z, teacher, student, omega, row_weights, backend="triton"), student
    )
    assert_fused("consistency_distillation forward", fwd)
    assert_fused("consistency_distillation backward", bwd, launches=0)  # the gradients came with the forward
    assert fwd.ops["aten.mean"] == 1 and bwd.ops["aten.mul"] == 1


def test_student_t_rsample_is_one_launch_each_way(gen, device, warm):
    mu, log_sigma, nu, _ = mixture(gen, device, True)
    scales = host_math.gamma_scales(nu.detach(), S).requires_grad_()
    key = torch.tensor([5], device=device)
    fwd, bwd = count(lambda: ops.student_t_rsample(mu, log_sigma, scales, key, backend="triton"), [mu, log_sigma, scales])
    assert_fused("student_t_rsample forward (key tensor)", fwd)
    assert_fused("student_t_rsample backward", bwd)
    assert fwd.device_ops == bwd.device_ops == 1
    with OpCounter() as with_int_seed:
        ops.student_t_rsample(mu, log_sigma, scales, 5, backend="triton")
    assert_fused("student_t_rsample forward (int seed: one fill, no copy)", with_int_seed)


def test_several_point_tiles_cost_one_reduction_per_gradient(gen, device, warm):
    """P * D beyond the tile budget (e.g. D = 1024 at P = 28 on a GPU): one launch and one
    deterministic sum per output gradient; still no host sync."""
    params = [t.detach()[:1, :, :32].contiguous().requires_grad_() if t.dim() == 3 else t.detach()[:1].requires_grad_()
              for t in mixture(gen, device, True)]
    z = torch.randn(1, P, 32, generator=gen).to(device).requires_grad_()
    run = lambda: torch.ops.casd.mixture_logpdf(z, *params, 128, 128)  # noqa: E731  (4 points per tile)
    fwd, bwd = count(run, [z, *params])
    assert_fused("mixture_logpdf forward, 7 point tiles", fwd)
    print(f"mixture_logpdf backward, 7 point tiles: {bwd}")
    assert bwd.host_syncs == 0 and bwd.triton_launches == 1 and bwd.ops["aten.sum"] == 4
    assert bwd.device_ops == 5


def test_the_layers_never_synchronise(gen, device, warm):
    """ConfidenceMixture -> StudentTSampler -> ConsistencyDistillationLoss, as the objective
    runs them (teacher and student rows in one batch), forward and backward, both kinds of
    noise: no host sync anywhere. (Counts of the whole step are in the benchmark report.)"""
    mu, log_sigma, nu, _ = mixture(gen, device, True)
    available = torch.rand(B, K, generator=gen).to(device) < 0.7
    available[:, 0] = True
    layers = ConfidenceMixture(), StudentTSampler(S, "triton"), ConsistencyDistillationLoss(backend="triton")
    half = B // 2
    for row_keys in (None, torch.arange(B, device=device) * 7919):
        with OpCounter() as fwd:
            mix = layers[0](mu, log_sigma, nu, available)
            samples = layers[1](mix, row_keys) if row_keys is not None else layers[1](mix)
            loss = layers[2](mix[:half], mix[half:], samples[:half]) + samples.square().mean()
        with OpCounter() as bwd:
            torch.autograd.grad(loss, [mu, log_sigma, nu])
        print(f"layers forward ({'row keys' if row_keys is not None else 'fresh key'}): {fwd}")
        print(f"layers backward: {bwd}")
        assert fwd.host_syncs == 0 and bwd.host_syncs == 0
        assert fwd.triton_launches == (2 if row_keys is None else 3) and bwd.triton_launches == 1


def test_validate_is_where_the_syncs_are(gen, device, warm):
    """validate=True reads the values on the host: the counter sees it (so it would see any
    sync that crept into the default path)."""
    params = mixture(gen, device, False)
    z = torch.randn(B, P, D, generator=gen).to(device)
    with OpCounter() as counts:
        ops.mixture_logpdf(z, *params, backend="triton", validate=True)
    assert counts.host_syncs >= 1
