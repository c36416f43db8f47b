"""What autograd keeps for the backward: the fused ops against the references.

``saved_tensors_hooks`` sees every tensor saved for the backward, including any saved by
PyTorch ops around the kernels (there are none left: each fused op is its custom op alone).
Bytes are counted per storage, once. Each fused op must save at most the size of its
inputs plus its outputs (in particular nothing of size B*P*K*D); consistency_distillation
saves only its packed per-row student gradients, the size of the student's parameters.
The reference's figure is printed and recorded next to it (``pytest -s`` or the junit
``record_property``), and must be at least one B*P*K*D (resp. B*K*S*D) tensor, which shows
the measurement sees large saves.
The shapes are the model's K = 7 and P = K*S = 28 at a D the interpreter runs quickly.
"""
from __future__ import annotations

import pytest
import torch

from casd.kernels import host_math, ops, packing

B, K, S, D = 16, 7, 4, 64
P = K * S


def saved_bytes(fn):
    """(bytes of all storages autograd saves while running fn, fn's result)."""
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(storages.values()), result


def total_bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def mixture(gen, device, requires_grad):
    mu = torch.randn(B, K, D, generator=gen)
    log_sigma = 0.3 * torch.randn(B, K, D, generator=gen)
    nu = 2.0 + 5.0 * torch.rand(B, K, generator=gen)
    available = torch.rand(B, K, generator=gen) < 0.7
    available[:, 0] = True
    log_pi = host_math.confidence_log_weights(torch.randn(B, K, generator=gen), available)
    return [t.to(device).requires_grad_(requires_grad) for t in (mu, log_sigma, nu, log_pi)]


def report(record_property, op, fused, reference, bound):
    line = f"{op}: saved for backward fused {fused} B, reference {reference} B, bound {bound} B"
    print(line)
    record_property(f"{op}_saved_bytes", {"fused": fused, "reference": reference, "bound": bound})


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_mixture_logpdf_saves_no_more_than_inputs_and_outputs(gen, device, record_property):
    params = mixture(gen, device, True)
    z = torch.randn(B, P, D, generator=gen).to(device).requires_grad_()
    fused, out = saved_bytes(lambda: ops.mixture_logpdf(z, *params, backend="triton"))
    reference, _ = saved_bytes(lambda: ops.mixture_logpdf(z, *params, backend="torch"))
    bound = total_bytes(z, *params, out)
    report(record_property, "mixture_logpdf", fused, reference, bound)
    assert fused <= bound
    assert fused < B * P * K * D * 4
    assert reference >= B * P * K * D * 4


def test_consistency_distillation_saves_no_more_than_inputs_and_outputs(gen, device, record_property):
    teacher = mixture(gen, device, False)
    student = mixture(gen, device, True)
    z = torch.randn(B, P, D, generator=gen).to(device)
    omega = torch.full((B, P), 1.0 / P, device=device)
    row_weights = torch.ones(B, device=device)
    fused, (loss, per_row) = saved_bytes(
        lambda: ops.consistency_distillation(z, teacher, student, omega, row_weights, backend="triton")
    )
    reference, _ = saved_bytes(
        lambda: ops.consistency_distillation(z, teacher, student, omega, row_weights, backend="torch")
    )
    bound = total_bytes(z, *teacher, *student, omega, row_weights, loss, per_row)
    report(record_property, "consistency_distillation", fused, reference, bound)
    assert fused <= bound
    # the packed per-row gradients [B, K, packed_width(D)] in fp32, and nothing else
    assert fused <= B * K * packing.packed_width(D) * 4
    assert fused < B * P * K * D * 4
    assert reference >= B * P * K * D * 4


def test_student_t_rsample_saves_no_more_than_inputs_and_outputs(gen, device, record_property):
    mu, log_sigma, nu, _ = mixture(gen, device, True)
    scales = host_math.gamma_scales(nu, S)
    key = torch.tensor(3, device=device)
    fused, z = saved_bytes(lambda: ops.student_t_rsample(mu, log_sigma, scales, key, backend="triton"))
    reference, _ = saved_bytes(lambda: ops.student_t_rsample(mu, log_sigma, scales, key, backend="torch"))
    bound = total_bytes(mu, log_sigma, scales, z)
    report(record_property, "student_t_rsample", fused, reference, bound)
    # the kernel regenerates eps from the key: it keeps only log_sigma, the scales and the key
    assert fused <= total_bytes(log_sigma, scales, key)
    assert reference >= B * K * S * D * 4
