"""kernels/reference.py (the definitions) and the input validation of kernels/ops.py.

The references are checked against independent float64 computations (torch.distributions,
scipy), by gradcheck, against the closed-form gradients of formulation §5 that the Triton backward
implements, and by sampling: draws from gamma_scales + student_t_rsample must have the
moments, marginals and shared-scale dependence of the D-variate Student-t.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

from casd.kernels import host_math, ops  # noqa: E402
from casd.kernels.reference import (  # noqa: E402
    consistency_distillation_reference,
    mixture_logpdf_reference,
    student_t_rsample_reference,
)

F64 = torch.float64


def _mixture(gen, batch, components, dim, *, absent=True, dtype=F64):
    """Random mixture parameters; with ``absent`` some components are -inf in log_pi."""
    mu = torch.randn(batch, components, dim, generator=gen, dtype=dtype)
    log_sigma = 0.5 * torch.randn(batch, components, dim, generator=gen, dtype=dtype)
    nu = 2.0 + 10.0 * torch.rand(batch, components, generator=gen, dtype=dtype)
    available = torch.rand(batch, components, generator=gen) < (0.6 if absent else 2.0)
    available[:, 0] = True
    if absent and components > 1:
        available[0, 1] = False  # at least one absent component whatever the draw
    u = torch.randn(batch, components, generator=gen, dtype=dtype)
    log_pi = host_math.confidence_log_weights(u, available)
    return mu, log_sigma, nu, log_pi


def _points(gen, batch, points, dim, dtype=F64):
    return 1.5 * torch.randn(batch, points, dim, generator=gen, dtype=dtype)


# ---------------------------------------------------------------------------- mixture_logpdf values


@pytest.mark.parametrize("components", [1, 4])
def test_mixture_logpdf_matches_torch_student_t_in_one_dimension(components):
    gen = torch.Generator().manual_seed(components)
    mu, log_sigma, nu, log_pi = _mixture(gen, 3, components, 1)
    z = _points(gen, 3, 6, 1)
    t = torch.distributions.StudentT(nu[:, None], mu[:, None, :, 0], log_sigma[:, None, :, 0].exp())
    expected = torch.logsumexp(log_pi[:, None] + t.log_prob(z), dim=-1)  # z [B,P,1] broadcasts over K
    torch.testing.assert_close(mixture_logpdf_reference(z, mu, log_sigma, nu, log_pi), expected)


@pytest.mark.parametrize("batch, points, components, dim", [(1, 1, 1, 2), (2, 5, 3, 3), (3, 7, 7, 5), (2, 3, 2, 17)])
def test_mixture_logpdf_matches_scipy_multivariate_t(batch, points, components, dim):
    gen = torch.Generator().manual_seed(100 * dim + components)
    mu, log_sigma, nu, log_pi = _mixture(gen, batch, components, dim)
    z = _points(gen, batch, points, dim)
    got = ops.mixture_logpdf(z, mu, log_sigma, nu, log_pi)
    assert got.shape == (batch, points) and got.dtype == F64
    for b in range(batch):
        per_component = np.stack(
            [
                stats.multivariate_t(
                    loc=mu[b, k].numpy(), shape=np.diag(np.exp(2 * log_sigma[b, k].numpy())), df=nu[b, k].item()
                ).logpdf(z[b].numpy()).reshape(points)
                for k in range(components)
            ],
            axis=-1,
        )
        expected = special.logsumexp(per_component + log_pi[b].numpy(), axis=-1)
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- gradients


def test_mixture_logpdf_gradcheck_all_inputs_with_absent_components():
    gen = torch.Generator().manual_seed(1)
    mu, log_sigma, nu, log_pi = _mixture(gen, 2, 3, 2)
    z = _points(gen, 2, 3, 2)
    inputs = tuple(t.clone().requires_grad_() for t in (z, mu, log_sigma, nu, log_pi))
    assert torch.autograd.gradcheck(mixture_logpdf_reference, inputs, eps=1e-6, atol=1e-6)


def test_mixture_logpdf_gradients_match_the_spec_closed_forms():
    """formulation §5's analytic gradients (what the Triton backward computes) equal autograd's."""
    gen = torch.Generator().manual_seed(2)
    batch, points, components, dim = 2, 5, 4, 3
    params = _mixture(gen, batch, components, dim)
    z = _points(gen, batch, points, dim)
    z, mu, log_sigma, nu, log_pi = (t.clone().requires_grad_() for t in (z, *params))
    out = mixture_logpdf_reference(z, mu, log_sigma, nu, log_pi)
    upstream = torch.randn(batch, points, generator=gen, dtype=F64)
    grads = torch.autograd.grad((out * upstream).sum(), (z, mu, log_sigma, nu, log_pi))

    z, mu, log_sigma, nu, log_pi, out = (t.detach() for t in (z, mu, log_sigma, nu, log_pi, out))
    sigma2 = torch.exp(2 * log_sigma)[:, None]  # [B,1,K,D]
    diff = z[:, :, None] - mu[:, None]  # [B,P,K,D]
    m = (diff.square() / sigma2).sum(-1)  # [B,P,K]
    nu_p = nu[:, None]
    q = 1 + m / nu_p
    a = (nu_p + dim) / (nu_p * q)
    log_t = host_math.log_normaliser(nu, log_sigma)[:, None] - 0.5 * (nu_p + dim) * torch.log(q)
    r = torch.exp(log_pi[:, None] + log_t - out[..., None]) * upstream[..., None]  # responsibilities x upstream
    dc_dnu = 0.5 * torch.digamma((nu + dim) / 2) - 0.5 * torch.digamma(nu / 2) - dim / (2 * nu)
    expected = (
        -(r[..., None] * a[..., None] * diff / sigma2).sum(2),
        (r[..., None] * a[..., None] * diff / sigma2).sum(1),
        (r[..., None] * (a[..., None] * diff.square() / sigma2 - 1)).sum(1),
        (r * (dc_dnu[:, None] - 0.5 * torch.log(q) + (nu_p + dim) * m / (2 * nu_p**2 * q))).sum(1),
        r.sum(1),
    )
    for name, got, want in zip(("z", "mu", "log_sigma", "nu", "log_pi"), grads, expected):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"d/d{name}: {m}")
    assert (grads[1][0, 1] == 0).all() and grads[3][0, 1] == 0  # absent component: no gradient


def test_student_t_rsample_reference_gradcheck_and_formula():
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 3, 4, generator=gen, dtype=F64, requires_grad=True)
    log_sigma = (0.3 * torch.randn(2, 3, 4, generator=gen, dtype=F64)).requires_grad_()
    scales = (0.5 + torch.rand(2, 3, 5, generator=gen, dtype=F64)).requires_grad_()
    eps = torch.randn(2, 3, 5, 4, generator=gen, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda m, s, ww: student_t_rsample_reference(m, s, ww, eps), (mu, log_sigma, scales), eps=1e-6, atol=1e-7
    )
    z = ops.student_t_rsample_with_noise(mu, log_sigma, scales, eps)
    b, k, q, j = 1, 2, 3, 0
    expected = mu[b, k, j] + math.exp(log_sigma[b, k, j].item()) * eps[b, k, q, j] * scales[b, k, q]
    assert z.shape == (2, 3, 5, 4) and z[b, k, q, j].item() == pytest.approx(expected.item(), rel=1e-12)


def _cd_case(seed, batch=3, points=4, components=3, dim=2):
    gen = torch.Generator().manual_seed(seed)
    teacher = _mixture(gen, batch, components, dim)
    student = _mixture(gen, batch, components, dim)
    z = _points(gen, batch, points, dim)
    omega = torch.softmax(torch.randn(batch, points, generator=gen, dtype=F64), -1)
    row_weights = batch * torch.softmax(torch.randn(batch, generator=gen, dtype=F64), 0)
    return z, teacher, student, omega, row_weights


def test_consistency_distillation_reference_gradcheck_student_only():
    z, teacher, student, omega, row_weights = _cd_case(4)
    student = tuple(t.clone().requires_grad_() for t in student)
    assert torch.autograd.gradcheck(
        lambda *s: consistency_distillation_reference(z, teacher, s, omega, row_weights), student, eps=1e-6, atol=1e-6
    )

    teacher = tuple(t.clone().requires_grad_() for t in teacher)
    z, omega, row_weights = (t.clone().requires_grad_() for t in (z, omega, row_weights))
    loss, per_row = ops.consistency_distillation(z, teacher, student, omega, row_weights)
    assert loss.shape == () and per_row.shape == (3,)
    loss.backward()
    teacher_side = ("z", "omega", "row_weights", "mu", "log_sigma", "nu", "log_pi")
    for name, t in zip(teacher_side, (z, omega, row_weights, *teacher)):
        assert t.grad is None, f"teacher-side input {name} received a gradient"
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in student)


def test_consistency_distillation_value():
    z, teacher, student, omega, row_weights = _cd_case(5)
    loss, per_row = consistency_distillation_reference(z, teacher, student, omega, row_weights)
    diff = mixture_logpdf_reference(z, *teacher) - mixture_logpdf_reference(z, *student)
    torch.testing.assert_close(per_row, row_weights * (omega * diff).sum(-1))
    torch.testing.assert_close(loss, per_row.mean())
    same, _ = consistency_distillation_reference(z, teacher, teacher, omega, row_weights)
    assert same.item() == 0.0


# ---------------------------------------------------------------------------- sampling


SAMPLES = 100_000
SAMPLE_NU = (6.5, 12.0)  # nu > 4: the sample variance has a finite variance (kurtosis 6/(nu-4))


@pytest.fixture(scope="module")
def student_t_draws():
    """z [1, 2, S, 3] from gamma_scales + student_t_rsample (torch backend), fixed seeds."""
    nu = torch.tensor([SAMPLE_NU])
    mu = torch.tensor([[[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]])
    log_sigma = torch.tensor([[[0.0, -0.7, 0.4], [0.2, 0.0, -1.2]]])
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        w = host_math.gamma_scales(nu, SAMPLES)
    z = ops.student_t_rsample(mu, log_sigma, w, seed=99)
    return z.double(), mu.double(), log_sigma.double(), nu.double()


def test_draws_have_student_t_mean_and_covariance(student_t_draws):
    z, mu, log_sigma, nu = student_t_draws
    for k in range(2):
        x, n = z[0, k], float(nu[0, k])
        var = torch.exp(2 * log_sigma[0, k]) * n / (n - 2)
        # Standard errors: mean sqrt(var/S); variance var * sqrt((2 + 6/(nu-4)) / S) (t kurtosis);
        # correlation of the uncorrelated (but dependent) coordinates sqrt(E W^4 / (E W^2)^2 / S).
        mean_se = torch.sqrt(var / SAMPLES)
        var_rel_se = math.sqrt((2 + 6 / (n - 4)) / SAMPLES)
        corr_se = math.sqrt((n - 2) / (n - 4) / SAMPLES)
        assert ((x.mean(0) - mu[0, k]).abs() < 6 * mean_se).all()
        cov = torch.cov(x.T)
        assert ((cov.diagonal() / var - 1).abs() < 6 * var_rel_se).all(), (cov.diagonal(), var)
        corr = torch.corrcoef(x.T)
        assert (corr - torch.eye(3, dtype=F64)).abs().max() < 6 * corr_se


def test_draw_marginals_pass_ks_against_scipy_t(student_t_draws):
    z, mu, log_sigma, nu = student_t_draws
    for k in range(2):
        n = float(nu[0, k])
        standardised = ((z[0, k] - mu[0, k]) / log_sigma[0, k].exp()).numpy()
        for j in range(3):
            assert stats.kstest(standardised[:, j], "t", args=(n,)).pvalue > 1e-3
        # Power check: the same draws clearly reject a Gaussian of the same variance.
        assert stats.kstest(standardised[:, 0], "norm", args=(0, math.sqrt(n / (n - 2)))).pvalue < 1e-6


def test_draws_share_one_gamma_scale_per_vector(student_t_draws):
    z, mu, log_sigma, nu = student_t_draws
    k, n = 1, float(nu[0, 1])  # nu = 12 > 8: the 8th moments exist, the estimate is stable
    squares = ((z[0, k] - mu[0, k]) / log_sigma[0, k].exp()).square()
    # x_j = eps_j W with W^2 = 1/G shared: corr(x_i^2, x_j^2) = (E W^4 - (E W^2)^2) / (3 E W^4 - (E W^2)^2),
    # E W^2 = nu/(nu-2), E W^4 = nu^2/((nu-2)(nu-4)); 0.0909 at nu = 12. Independent t's give 0.
    ew2, ew4 = n / (n - 2), n**2 / ((n - 2) * (n - 4))
    expected = (ew4 - ew2**2) / (3 * ew4 - ew2**2)
    corr = torch.corrcoef(squares.T)
    off_diagonal = corr[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal - expected).abs().max() < 0.3 * expected, (off_diagonal, expected)


def test_student_t_rsample_is_repeatable_per_seed():
    gen = torch.Generator().manual_seed(6)
    mu, log_sigma = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    w = torch.rand(2, 3, 5, generator=gen) + 0.5
    first = ops.student_t_rsample(mu, log_sigma, w, seed=17)
    assert torch.equal(first, ops.student_t_rsample(mu, log_sigma, w, seed=17))
    assert not torch.equal(first, ops.student_t_rsample(mu, log_sigma, w, seed=18))


# ---------------------------------------------------------------------------- input validation

_MIXTURE_NAMES = ("mu", "log_sigma", "nu", "log_pi")


def _valid_call(op, gen, batch, components, points, dim, dtype):
    """(kwargs by argument name, a function calling ``op`` with them)."""
    mixture = dict(zip(_MIXTURE_NAMES, _mixture(gen, batch, components, dim, absent=False, dtype=dtype)))
    if op == "mixture_logpdf":
        args = {"z": _points(gen, batch, points, dim, dtype), **mixture}
        return args, lambda a, backend, validate=False: ops.mixture_logpdf(
            *(a[n] for n in ("z", *_MIXTURE_NAMES)), backend=backend, validate=validate
        )
    if op == "student_t_rsample_with_noise":
        args = {
            "mu": mixture["mu"],
            "log_sigma": mixture["log_sigma"],
            "scales": torch.rand(batch, components, points, generator=gen, dtype=dtype) + 0.5,
            "eps": torch.randn(batch, components, points, dim, generator=gen, dtype=dtype),
        }
        return args, lambda a, backend, validate=False: ops.student_t_rsample_with_noise(
            a["mu"], a["log_sigma"], a["scales"], a["eps"], backend=backend
        )
    student = _mixture(gen, batch, components, dim, absent=False, dtype=dtype)
    args = {
        "z": _points(gen, batch, points, dim, dtype),
        **{f"teacher {n}": t for n, t in mixture.items()},
        **{f"student {n}": t for n, t in zip(_MIXTURE_NAMES, student)},
        "omega": torch.full((batch, points), 1.0 / points, dtype=dtype),
        "row_weights": torch.ones(batch, dtype=dtype),
    }

    def call(a, backend, validate=False):
        teacher = tuple(a[f"teacher {n}"] for n in _MIXTURE_NAMES)
        student = tuple(a[f"student {n}"] for n in _MIXTURE_NAMES)
        return ops.consistency_distillation(
            a["z"], teacher, student, a["omega"], a["row_weights"], backend=backend, validate=validate
        )

    return args, call


# Dimensions whose size is fixed by the other arguments (changing them must be an error).
_CONSTRAINED_DIMS = {"z": (0, 2), "scales": (0, 1), "omega": (0, 1), "row_weights": (0,), "eps": (0, 1, 2, 3)}
_OPS = ("mixture_logpdf", "student_t_rsample_with_noise", "consistency_distillation")
_SHAPE_CORRUPTIONS = ("rank_up", "rank_down", "resize")
_TYPE_CORRUPTIONS = ("int64", "bool", "not_tensor")


def _constrained_dims(name, ndim, op):
    return _CONSTRAINED_DIMS.get(name.split(" ")[-1], tuple(range(ndim)))


def _corrupt(t, kind, dim_index):
    if kind == "rank_up":
        return t.unsqueeze(0)
    if kind == "rank_down":
        return t.flatten(0, 1) if t.dim() > 1 else t[0]
    if kind == "resize":
        shape = list(t.shape)
        shape[dim_index] += 1
        return torch.randn(shape, dtype=t.dtype)
    if kind == "int64":
        return t.to(torch.int64)
    if kind == "bool":
        return t > 0
    return t.tolist()  # not_tensor


def _names_argument(message, name):
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message) is not None


_shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 5)
)  # batch, components, points (or samples), dim


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(_OPS),
    shapes=_shapes,
    kind=st.sampled_from(_SHAPE_CORRUPTIONS + _TYPE_CORRUPTIONS),
    backend=st.sampled_from(ops.BACKENDS),
    data=st.data(),
)
def test_malformed_arguments_raise_naming_the_argument(op, shapes, kind, backend, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    args, call = _valid_call(op, gen, *shapes, F64)
    name = data.draw(st.sampled_from(sorted(args)), label="argument")
    dim_index = data.draw(st.sampled_from(_constrained_dims(name, args[name].dim(), op)), label="dim")
    args[name] = _corrupt(args[name], kind, dim_index)
    expected = TypeError if kind in _TYPE_CORRUPTIONS else ValueError
    with pytest.raises(expected) as info:
        call(args, backend)
    assert _names_argument(str(info.value), name), (name, str(info.value))


@settings(max_examples=40, deadline=None)
@given(
    op=st.sampled_from(("mixture_logpdf", "consistency_distillation")),
    shapes=_shapes,
    bad=st.sampled_from(("nu_zero", "nu_negative", "nu_nan", "log_pi_all_absent")),
    role=st.sampled_from(("teacher ", "student ")),
    backend=st.sampled_from(ops.BACKENDS),
    data=st.data(),
)
def test_bad_values_raise(op, shapes, bad, role, backend, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    args, call = _valid_call(op, gen, *shapes, F64)
    prefix = role if op == "consistency_distillation" else ""
    batch, components = shapes[:2]
    row, col = data.draw(st.integers(0, batch - 1)), data.draw(st.integers(0, components - 1))
    if bad == "log_pi_all_absent":
        name = prefix + "log_pi"
        args[name] = args[name].clone()
        args[name][row] = float("-inf")
    else:
        name = prefix + "nu"
        args[name] = args[name].clone()
        args[name][row, col] = {"nu_zero": 0.0, "nu_negative": -1.5, "nu_nan": float("nan")}[bad]
    with pytest.raises(ValueError) as info:
        call(args, backend, validate=True)
    assert _names_argument(str(info.value), name), (name, str(info.value))


@pytest.mark.parametrize("op", ("mixture_logpdf", "consistency_distillation"))
def test_bad_values_do_not_raise_or_sync_without_validate(op):
    """The default never reads values on the host: bad values propagate (NaN, -inf) instead."""
    from casd.kernels.op_count import OpCounter

    gen = torch.Generator().manual_seed(3)
    args, call = _valid_call(op, gen, 2, 3, 4, 5, F64)
    prefix = "student " if op == "consistency_distillation" else ""
    args[prefix + "nu"] = args[prefix + "nu"].clone()
    args[prefix + "nu"][0, 0] = -1.0
    with OpCounter() as counts:
        out = call(args, "torch")
    assert counts.host_syncs == 0, counts
    values = out[1] if isinstance(out, tuple) else out
    assert torch.isnan(values[0]).any()


@pytest.mark.parametrize("op", _OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_valid_arguments_pass_validation(op, dtype):
    gen = torch.Generator().manual_seed(7)
    args, call = _valid_call(op, gen, 2, 3, 4, 5, dtype)
    out = call(args, "torch")
    out = out[1] if isinstance(out, tuple) else out
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    "seed, error",
    [(-1, ValueError), (2**63, ValueError), (1.0, TypeError), (True, TypeError), ("3", TypeError), (None, TypeError),
     (torch.tensor([1.5]), TypeError), (torch.tensor([1, 2, 3]), ValueError)],
)
def test_bad_seeds_raise(seed, error):
    mu = torch.zeros(2, 2, 3)
    with pytest.raises(error, match="seed"):
        ops.student_t_rsample(mu, mu, torch.ones(2, 2, 4), seed)


def test_seeds_use_63_bits_and_keys_64():
    mu, scales = torch.zeros(2, 2, 3), torch.ones(2, 2, 4)
    draws = [ops.student_t_rsample(mu, mu, scales, seed) for seed in (5, 5 + 2**62, 2**63 - 1)]
    draws.append(ops.student_t_rsample(mu, mu, scales, torch.tensor(-(2**63))))
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j]), (i, j)


@pytest.mark.parametrize("backend", ["cuda", "Torch", "", None])
def test_unknown_backend_raises(backend):
    gen = torch.Generator().manual_seed(8)
    for op in _OPS:
        args, call = _valid_call(op, gen, 1, 2, 2, 3, F64)
        with pytest.raises(ValueError, match="backend"):
            call(args, backend)
    with pytest.raises(ValueError, match="backend"):
        ops.student_t_rsample(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1, 3), 0, backend=backend)


def test_empty_points_or_samples_raise():
    gen = torch.Generator().manual_seed(9)
    mu, log_sigma, nu, log_pi = _mixture(gen, 2, 3, 4, absent=False)
    with pytest.raises(ValueError, match=r"\bz\b"):
        ops.mixture_logpdf(torch.zeros(2, 0, 4, dtype=F64), mu, log_sigma, nu, log_pi)
    with pytest.raises(ValueError, match=r"\bscales\b"):
        ops.student_t_rsample(mu, log_sigma, torch.ones(2, 3, 0, dtype=F64), 0)
    with pytest.raises(ValueError, match="mu must be non-empty"):
        ops.mixture_logpdf(torch.zeros(0, 1, 4), mu[:0], log_sigma[:0], nu[:0], log_pi[:0])


def test_student_mixture_must_match_teacher():
    z, teacher, student, omega, w = _cd_case(10, components=3)
    student = tuple(t[:, :2] for t in student)
    student = (*student[:3], torch.log_softmax(student[3].nan_to_num(neginf=0.0), -1))
    with pytest.raises(ValueError, match="student mixture"):
        ops.consistency_distillation(z, teacher, student, omega, w)
