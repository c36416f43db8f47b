"""The fused consistency_distillation kernel against the float64 PyTorch reference.

Fresh random teacher/student mixtures each run (seed printed): a complete teacher, a
student with random absent components (component 0 absent in one row, only the last one
present in another), teacher-like points, point weights omega that sum to one per row and
row weights with mean one, as in formulation §4. The per-row terms are differences of two
log densities, so their float32 error is measured against the size of what is subtracted,
w_b sum_p omega_bp (|log p_T| + |log p_S|): 1e-5 of it (1e-10 in float64). Gradients
(student only; computed by the forward launch, scaled by the backward) normwise 1e-4
(1e-9 in float64).
"""
from __future__ import annotations


import pytest
import torch

from casd.kernels import host_math, ops, packing
from casd.kernels.reference import consistency_distillation_reference, mixture_logpdf_reference

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # interpreter: where branches

STUDENT = ("mu", "log_sigma", "nu", "log_pi")
TOLERANCES = {  # (per-row rtol, gradient rtol)
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-5, 2e-3),
    torch.bfloat16: (1e-5, 1.6e-2),
}


def random_mixture(gen, batch, components, dim, *, complete):
    mu = torch.randn(batch, components, dim, generator=gen, dtype=torch.float64)
    log_sigma = 0.4 * torch.randn(batch, components, dim, generator=gen, dtype=torch.float64)
    nu = 2.0 + 10.0 * torch.rand(batch, components, generator=gen, dtype=torch.float64)
    available = torch.ones(batch, components, dtype=torch.bool)
    if not complete:
        available = torch.rand(batch, components, generator=gen) < 0.6
        available[~available.any(-1), -1] = True
        if components > 1:
            available[0] = False
            available[0, -1] = True  # only the last component
            if batch > 1:
                available[1, 0] = False  # component 0 absent
                available[1, -1] = True
    u = torch.randn(batch, components, generator=gen, dtype=torch.float64)
    return [mu, log_sigma, nu, host_math.confidence_log_weights(u, available)]


def random_problem(gen, batch, points, components, dim, *, dtype=torch.float32, device="cpu"):
    """(z, teacher, student, omega, row_weights) in ``dtype`` on ``device``."""
    teacher = random_mixture(gen, batch, components, dim, complete=True)
    student = random_mixture(gen, batch, components, dim, complete=False)
    student[0] = teacher[0] + 0.3 * torch.randn(teacher[0].shape, generator=gen, dtype=torch.float64)
    z = teacher[0][:, :1] + 1.5 * torch.randn(batch, points, dim, generator=gen, dtype=torch.float64)
    omega = torch.softmax(torch.randn(batch, points, generator=gen, dtype=torch.float64), -1)
    w = batch * torch.softmax(torch.randn(batch, generator=gen, dtype=torch.float64), 0)

    def cast(t):
        return t.to(device=device, dtype=dtype)

    return cast(z), [cast(t) for t in teacher], [cast(t) for t in student], cast(omega), cast(w)


def run_and_reference(problem, row_grad, run=None):
    """Kernel and float64 reference on the same values; gradients of loss + sum(row_grad * per_row)."""
    run = run or (lambda *xs: ops.consistency_distillation(*xs, backend="triton"))
    z, teacher, student, omega, row_weights = problem
    student_leaves = [t.detach().clone().requires_grad_() for t in student]
    loss, per_row = run(z, teacher, student_leaves, omega, row_weights)
    objective = loss + (row_grad.to(per_row.dtype) * per_row).sum()
    grads = torch.autograd.grad(objective, student_leaves)
    ref_leaves = [t.detach().double().requires_grad_() for t in student]
    ref_loss, ref_per_row = consistency_distillation_reference(
        z.double(), [t.double() for t in teacher], ref_leaves, omega.double(), row_weights.double()
    )
    ref_grads = torch.autograd.grad(ref_loss + (row_grad.double() * ref_per_row).sum(), ref_leaves)
    return (loss, per_row, grads), (ref_loss, ref_per_row, ref_grads)


def subtracted_magnitude(problem):
    """w_b sum_p omega_bp (|log p_T| + |log p_S|) [B]: the scale of what per_row cancels."""
    z, teacher, student, omega, row_weights = (x if torch.is_tensor(x) else [t.double() for t in x] for x in problem)
    log_t = mixture_logpdf_reference(z.double(), *teacher).abs()
    log_s = mixture_logpdf_reference(z.double(), *student).abs()
    return row_weights.double().abs() * (omega.double().abs() * (log_t + log_s)).sum(-1)


def check_against_reference(problem, row_grad, dtype, run=None):
    row_rtol, grad_rtol = TOLERANCES[dtype]
    (loss, per_row, grads), (ref_loss, ref_per_row, ref_grads) = run_and_reference(problem, row_grad, run)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == per_row.dtype == out_dtype and loss.dim() == 0
    scale = subtracted_magnitude(problem)
    row_err = (per_row.double() - ref_per_row).abs()
    assert (row_err <= row_rtol * scale).all(), f"per_row error {row_err.max():.3e}, scale {scale.min():.3e}"
    assert abs(loss.item() - ref_loss.item()) <= row_rtol * scale.mean().item()
    assert loss.item() == pytest.approx(per_row.mean().item(), rel=1e-12, abs=1e-12)
    student = problem[2]
    absent = torch.isneginf(student[3])
    for name, grad, ref_grad, leaf in zip(STUDENT, grads, ref_grads, student):
        assert grad.dtype == leaf.dtype and torch.isfinite(grad).all(), name
        err = (grad.double() - ref_grad).abs().max().item()
        bound = grad_rtol * ref_grad.abs().max().item()
        assert err <= bound + 1e-13, f"student d/d{name}: max error {err:.3e} > {bound:.3e}"
        assert (grad[absent] == 0).all(), f"student d/d{name} is not exactly 0 for absent components"


SHAPES = [(1, 1, 1, 1), (3, 5, 3, 7), (2, 28, 7, 13), (4, 6, 5, 33)]  # (B, P, K, D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-P{}-K{}-D{}".format(*s))
def test_loss_rows_and_student_gradients_match_reference(gen, device, shape, dtype):
    problem = random_problem(gen, *shape, dtype=dtype, device=device)
    row_grad = torch.randn(shape[0], generator=gen).to(device)
    check_against_reference(problem, row_grad, dtype)


@pytest.mark.parametrize("dim", [3, 100, 128, 256, 1024])
def test_dimensions_up_to_1024(gen, device, dim):
    problem = random_problem(gen, 2, 4, 3, dim, device=device)
    check_against_reference(problem, torch.randn(2, generator=gen).to(device), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs(gen, device, dtype):
    problem = random_problem(gen, 3, 5, 3, 6, dtype=dtype, device=device)
    check_against_reference(problem, torch.randn(3, generator=gen).to(device), dtype)


def with_tiles(point_tile, pack_tile):
    """The custom op with a tile budget that forces several point tiles or packed rows."""

    def run(z, teacher, student, omega, row_weights):
        per_row, _ = torch.ops.casd.consistency_distillation(
            z, *teacher, *student, omega, row_weights, True, point_tile, pack_tile
        )
        return per_row.mean(), per_row

    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_several_point_tiles_and_packed_rows(gen, device, dtype):
    problem = random_problem(gen, 3, 11, 3, 7, dtype=dtype, device=device)
    row_grad = torch.randn(3, generator=gen).to(device)
    # [1 row, 4 points] tiles: 3 point tiles per row; then 3 rows packed into a 4-row tile
    for tiles in ((32, 32), (32, 128)):
        check_against_reference(problem, row_grad, dtype, run=with_tiles(*tiles))


def test_only_the_student_receives_gradients(gen, device):
    z, teacher, student, omega, row_weights = random_problem(gen, 2, 4, 3, 5, device=device)
    leaves = [t.clone().requires_grad_() for t in (z, *teacher, *student, omega, row_weights)]
    z, teacher, student, omega, row_weights = leaves[0], leaves[1:5], leaves[5:9], leaves[9], leaves[10]
    loss, _ = ops.consistency_distillation(z, teacher, student, omega, row_weights, backend="triton")
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    assert all(g is None for g in grads[:5] + grads[9:]), "teacher, z, omega or w got a gradient"
    assert all(g is not None for g in grads[5:9])


def test_bitwise_deterministic(gen, device):
    problem = random_problem(gen, 4, 9, 3, 7, device=device)
    row_grad = torch.randn(4, generator=gen).to(device)
    run = with_tiles(32, 64)
    first, _ = run_and_reference(problem, row_grad, run)
    second, _ = run_and_reference(problem, row_grad, run)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert all(torch.equal(a, b) for a, b in zip(first[2], second[2]))


def test_every_output_element_is_written(gen, device, poison_new_tensors):
    problem = random_problem(gen, 3, 7, 3, 5, device=device)
    for run in (None, with_tiles(32, 64)):
        (loss, per_row, grads), _ = run_and_reference(problem, torch.ones(3, device=device), run)
        assert torch.isfinite(per_row).all() and all(torch.isfinite(g).all() for g in grads)
    z, teacher, student, omega, row_weights = problem
    for tiles in ((0, 0), (32, 64)):  # the packed per-row gradients, padding included
        _, row_grads = torch.ops.casd.consistency_distillation(z, *teacher, *student, omega, row_weights, True, *tiles)
        assert torch.isfinite(row_grads).all()


def test_without_gradients_the_gradient_pass_is_skipped_and_the_rows_agree(gen, device):
    z, teacher, student, omega, row_weights = random_problem(gen, 3, 5, 3, 6, device=device)
    _, with_grads = torch.ops.casd.consistency_distillation(z, *teacher, *student, omega, row_weights, True, 0, 0)
    with torch.no_grad():
        leaves = [t.clone().requires_grad_() for t in student]
        loss, per_row = ops.consistency_distillation(z, teacher, leaves, omega, row_weights, backend="triton")
    per_row_only, none = torch.ops.casd.consistency_distillation(z, *teacher, *student, omega, row_weights, False, 0, 0)
    assert none.numel() == 0 and with_grads.shape == (3, 3, packing.packed_width(6))
    assert torch.equal(per_row, per_row_only) and not per_row.requires_grad


def test_student_row_with_every_component_absent(gen, device, forbid_kernel_launch):
    """Without validation the row's term is +inf (log p_S = -inf), no NaN in the other rows;
    with validate=True: an error naming the student, before any launch."""
    z, teacher, student, omega, row_weights = random_problem(gen, 3, 3, 3, 4, device=device)
    student[3][1] = float("-inf")
    leaves = [t.clone().requires_grad_() for t in student]
    _, per_row = ops.consistency_distillation(z, teacher, leaves, omega, row_weights, backend="triton")
    assert per_row[1] == float("inf") and torch.isfinite(per_row[[0, 2]]).all()
    grads = torch.autograd.grad(per_row[[0, 2]].sum(), leaves)
    assert all(torch.isfinite(g).all() and (g[1] == 0).all() for g in grads)

    from casd.kernels.fused import consistency_distillation as module

    forbid_kernel_launch(module, "_consistency_forward_kernel")
    with pytest.raises(ValueError, match="student log_pi has a row where every component is absent"):
        ops.consistency_distillation(z, teacher, student, omega, row_weights, backend="triton", validate=True)


def test_mixed_devices_and_bad_dtypes_are_refused(gen, device):
    z, teacher, student, omega, row_weights = random_problem(gen, 2, 3, 2, 4, device=device)
    with pytest.raises(TypeError, match="row_weights must be float16, bfloat16, float32 or float64"):
        ops.consistency_distillation(z, teacher, student, omega, row_weights.long(), backend="triton")
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        ops.consistency_distillation(z, teacher, student, omega.to("meta"), row_weights, backend="triton")
