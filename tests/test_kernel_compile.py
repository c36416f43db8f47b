"""The fused operations inside torch.compile: custom-op registration, fullgraph, eager parity.

``torch.library.opcheck`` checks each ``torch.ops.casd`` op's schema, fake (meta)
implementation and autograd registration against its real implementation, and that
AOTAutograd can trace it. Then the public functions (``backend="triton"``) and a whole CASD
training step built from the public constructors are compiled with ``fullgraph=True`` (any
graph break fails) under ``aot_eager`` and, on the CPU, ``inductor``, and must give the
eager values and gradients. On the CPU the kernels run through Triton's interpreter inside
the compiled graph; on a GPU the same tests run compiled kernels.
"""
from __future__ import annotations

import pytest
import torch

from casd.kernels import host_math, ops

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

BACKENDS = ["aot_eager", "inductor"]
B, K, S, D = 3, 4, 3, 10
P = K * S


def mixture(gen, device, requires_grad=False, dtype=torch.float32):
    mu = torch.randn(B, K, D, generator=gen)
    log_sigma = 0.3 * torch.randn(B, K, D, generator=gen)
    nu = 2.0 + 8.0 * torch.rand(B, K, generator=gen)
    available = torch.rand(B, K, generator=gen) < 0.6
    available[:, -1] = True
    available[0, 0] = False
    log_pi = host_math.confidence_log_weights(torch.randn(B, K, generator=gen), available)
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (mu, log_sigma, nu, log_pi)]


def op_samples(gen, device):
    """(op, args) for opcheck: every custom op with realistic inputs."""
    z = torch.randn(B, P, D, generator=gen).to(device).requires_grad_()
    params = mixture(gen, device, requires_grad=True)
    teacher = mixture(gen, device)
    omega = torch.full((B, P), 1.0 / P, device=device)
    row_weights = torch.ones(B, device=device)
    scales = (0.5 + torch.rand(B, K, S, generator=gen)).to(device).requires_grad_()
    key = torch.tensor([3, -7, 2**62], device=device)
    log_p = ops.mixture_logpdf(z.detach(), *(t.detach() for t in params), backend="triton")
    return [
        (torch.ops.casd.mixture_logpdf, (z, *params, 0, 0)),
        (torch.ops.casd.mixture_logpdf_backward,
         (torch.randn(B, P, device=device), log_p, z.detach(), *(t.detach() for t in params), True, 0, 0)),
        (torch.ops.casd.consistency_distillation, (z.detach(), *teacher, *params, omega, row_weights, True, 0, 0)),
        (torch.ops.casd.student_t_rsample, (params[0], params[1], scales, key, None, 0, 0)),
        (torch.ops.casd.student_t_rsample_backward,
         (torch.randn(B, K, S, D, device=device), params[1].detach(), scales.detach(), key, None, torch.float32, 0, 0)),
        (torch.ops.casd.keyed_standard_gamma, (params[2].detach(), key, S)),
    ]


def test_custom_ops_pass_opcheck(gen, device):
    for op, args in op_samples(gen, device):
        torch.library.opcheck(op, args)


def _grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    return out.detach(), torch.autograd.grad(out.sum(), leaves)


def _assert_same(eager, compiled, rtol=1e-6, atol=1e-6):
    torch.testing.assert_close(compiled[0], eager[0], rtol=rtol, atol=atol)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_op_compiles_fullgraph_and_matches_eager(gen, device, backend):
    torch._dynamo.reset()
    z = torch.randn(B, P, D, generator=gen).to(device)
    params = mixture(gen, device)
    teacher = mixture(gen, device)
    omega = torch.full((B, P), 1.0 / P, device=device)
    row_weights = torch.ones(B, device=device)
    scales = (0.5 + torch.rand(B, K, S, generator=gen)).to(device)
    key = torch.tensor([11, 12, 13], device=device)

    def log_density(z, mu, log_sigma, nu, log_pi):
        return 2.0 * ops.mixture_logpdf(z, mu, log_sigma, nu, log_pi, backend="triton") + 1.0

    def distillation(mu, log_sigma, nu, log_pi):
        loss, per_row = ops.consistency_distillation(z, teacher, (mu, log_sigma, nu, log_pi), omega, row_weights,
                                                     backend="triton")
        return loss + per_row[0]

    def sample(mu, log_sigma, scales):
        return ops.student_t_rsample(mu, log_sigma, scales, key, backend="triton").tanh()

    def keyed_scales(nu):
        return ops.keyed_gamma_scales(nu, S, key, backend="triton") * 3.0

    cases = [(log_density, [z, *params]), (distillation, params), (sample, [params[0], params[1], scales]),
             (keyed_scales, [params[2]])]
    for fn, inputs in cases:
        eager = _grads(fn, inputs)
        compiled = _grads(torch.compile(fn, backend=backend, fullgraph=True), inputs)
        _assert_same(eager, compiled)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_casd_training_step_compiles_fullgraph_and_matches_eager(device, backend, monkeypatch):
    """Model + objective (backend="triton") forward and backward under
    torch.compile(fullgraph=True): the same losses and parameter gradients as eager. The
    sampler's key and Gamma draws come from torch's generator in both (Inductor's own RNG
    replaced by PyTorch's: fallback_random), so the same seed gives the same numbers."""
    from casd.model import CASDModel, ModelConfig
    from casd.objective import CASDObjective, ObjectiveConfig
    from casd.modalities import MODALITIES

    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch.manual_seed(0)
    config = ModelConfig(feature_dims=(6, 3, 4), hidden=8, embed_dim=6, dropout=0.0, heads=2)
    model = CASDModel(config).to(device)
    objective = CASDObjective(ObjectiveConfig(num_samples=2, backend="triton", lambda_cd=0.5))
    gen = torch.Generator().manual_seed(1)
    batch = 4
    teacher = {}
    for name, length, dim in zip(MODALITIES, (5, 4, 4), config.feature_dims):
        teacher[name] = torch.randn(batch, length, dim, generator=gen).to(device)
        teacher[f"{name}_lengths"] = torch.tensor([length, length - 1, 2, length], device=device)
    teacher["present"] = torch.ones(batch, len(MODALITIES), dtype=torch.bool, device=device)
    teacher["labels"] = torch.randn(batch, generator=gen).to(device)
    student = {**teacher, "present": torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1]],
                                                  dtype=torch.bool, device=device)}
    # Frames lost too: with the hard availability mask a student that only lacks modalities has
    # the teacher's available components, and the per-component L_cd would be exactly 0.
    for name in MODALITIES:
        student[f"{name}_lengths"] = (teacher[f"{name}_lengths"] - 1).clamp(min=1)

    def step(teacher, student):
        losses = objective(model, teacher, student)
        return losses.total, losses.distillation

    def run(fn):
        torch.manual_seed(123)
        model.zero_grad(set_to_none=True)
        total, distillation = fn(teacher, student)
        total.backward()
        return (total.detach(), distillation.detach()), [p.grad.clone() for p in model.parameters()]

    eager = run(step)
    compiled = run(torch.compile(step, backend=backend, fullgraph=True))
    assert eager[0][1].abs() > 1e-4, "no distillation term: the fused ops were not exercised"
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
