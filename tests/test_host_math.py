"""kernels/host_math.py: the O(B*K) Student-t terms against scipy / torch.distributions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

from casd.kernels import host_math  # noqa: E402


def _random_params(gen, batch, components, dim, dtype=torch.float64):
    nu = 2.0 + 30.0 * torch.rand(batch, components, generator=gen, dtype=dtype)
    log_sigma = torch.randn(batch, components, dim, generator=gen, dtype=dtype) * 0.7
    return nu, log_sigma


# ---------------------------------------------------------------------------- normaliser, entropy


@pytest.mark.parametrize("dim", [2, 3, 7])
def test_log_normaliser_and_entropy_match_scipy_multivariate_t(dim):
    gen = torch.Generator().manual_seed(dim)
    nu, log_sigma = _random_params(gen, 2, 3, dim)
    nu[0, 0] = 2.05  # near the finite-variance limit
    nu[1, 2] = 800.0  # near-Gaussian: the lgamma difference cancels
    log_norm = host_math.log_normaliser(nu, log_sigma)
    ent = host_math.entropy(nu, log_sigma)
    unc = host_math.uncertainty(nu, log_sigma)
    for b in range(2):
        for k in range(3):
            sigma = np.exp(log_sigma[b, k].numpy())
            dist = stats.multivariate_t(loc=np.zeros(dim), shape=np.diag(sigma**2), df=float(nu[b, k]))
            # At z = mu the kernel term log1p(0) vanishes, so log t(mu) = C.
            assert log_norm[b, k].item() == pytest.approx(dist.logpdf(np.zeros(dim)), rel=1e-10, abs=1e-10)
            assert ent[b, k].item() == pytest.approx(dist.entropy(), rel=1e-8, abs=1e-8)
            assert unc[b, k].item() == pytest.approx(dist.entropy() / dim, rel=1e-8, abs=1e-8)


def test_one_dimensional_terms_match_torch_student_t():
    gen = torch.Generator().manual_seed(11)
    nu, log_sigma = _random_params(gen, 4, 5, 1)
    reference = torch.distributions.StudentT(nu, torch.zeros_like(nu), log_sigma[..., 0].exp())
    torch.testing.assert_close(host_math.entropy(nu, log_sigma), reference.entropy())
    torch.testing.assert_close(host_math.log_normaliser(nu, log_sigma), reference.log_prob(reference.loc))


def test_float32_terms_stay_accurate_at_large_nu():
    nu64 = torch.tensor([[3.0, 40.0, 5e3]], dtype=torch.float64)
    log_sigma64 = torch.full((1, 3, 4), 0.3, dtype=torch.float64)
    for fn in (host_math.log_normaliser, host_math.entropy):
        expected = fn(nu64, log_sigma64)
        got = fn(nu64.float(), log_sigma64.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


def test_log_normaliser_nu_gradient_matches_closed_form():
    gen = torch.Generator().manual_seed(5)
    for dim in (1, 4, 9):
        nu, log_sigma = _random_params(gen, 3, 2, dim)
        nu.requires_grad_()
        (grad,) = torch.autograd.grad(host_math.log_normaliser(nu, log_sigma).sum(), nu)
        nu = nu.detach()
        closed = 0.5 * torch.digamma((nu + dim) / 2) - 0.5 * torch.digamma(nu / 2) - dim / (2 * nu)
        torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-12)


def test_entropy_gradcheck():
    gen = torch.Generator().manual_seed(6)
    nu, log_sigma = _random_params(gen, 2, 3, 4)
    assert torch.autograd.gradcheck(
        host_math.entropy, (nu.requires_grad_(), log_sigma.requires_grad_()), eps=1e-6, atol=1e-7
    )


# ---------------------------------------------------------------------------- confidence weights


def test_confidence_log_weights_masked_softmax():
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    available = torch.rand(6, 7, generator=gen) < 0.5
    available[:, 3] = True  # every row keeps at least one component
    tau = 0.7
    log_pi = host_math.confidence_log_weights(u, available, tau)
    assert torch.equal(torch.isneginf(log_pi), ~available)
    for b in range(6):
        idx = available[b].nonzero().flatten()
        expected = torch.log_softmax(-u[b, idx] / tau, dim=0)
        torch.testing.assert_close(log_pi[b, idx], expected)
    torch.testing.assert_close(log_pi.exp().sum(-1), torch.ones(6, dtype=torch.float64))


def test_confidence_log_weights_ignore_non_finite_uncertainty_of_absent_components():
    u = torch.tensor([[0.2, float("nan"), float("inf"), -0.4]], requires_grad=True)
    available = torch.tensor([[True, False, False, True]])
    log_pi = host_math.confidence_log_weights(u, available)
    torch.testing.assert_close(log_pi[0, [0, 3]], torch.log_softmax(-u.detach()[0, [0, 3]], 0))
    log_pi[0, [0, 3]].sum().backward()
    assert torch.isfinite(u.grad).all() and (u.grad[0, 1:3] == 0).all()


def test_confidence_log_weights_errors():
    u = torch.zeros(3, 2)
    available = torch.tensor([[True, False], [False, False], [True, True]])
    with pytest.raises(ValueError, match=r"every mixture component absent \(first rows: \[1\]\)"):
        host_math.confidence_log_weights(u, available, validate=True)
    # without validate=True nothing is read on the host: the empty row is NaN, the others fine
    log_pi = host_math.confidence_log_weights(u, available)
    assert torch.isnan(log_pi[1]).all() and torch.isfinite(log_pi[2]).all()
    with pytest.raises(ValueError, match="available"):
        host_math.confidence_log_weights(u, available[:, :1])
    with pytest.raises(ValueError, match="tau"):
        host_math.confidence_log_weights(u, torch.ones(3, 2, dtype=torch.bool), tau=0.0)


def test_mixture_uncertainty_ignores_absent_components():
    gen = torch.Generator().manual_seed(8)
    u = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    available = torch.rand(4, 5, generator=gen) < 0.6
    available[:, 0] = True
    log_pi = host_math.confidence_log_weights(torch.randn(4, 5, generator=gen, dtype=torch.float64), available)
    expected = (log_pi.exp() * u.masked_fill(~available, 0.0)).sum(-1)
    poisoned = u.masked_fill(~available, float("inf"))
    poisoned[~available & (torch.arange(5) % 2 == 0)] = float("nan")
    torch.testing.assert_close(host_math.mixture_uncertainty(log_pi, poisoned), expected)


def test_mixture_uncertainty_gradient_is_finite_with_poisoned_absent_components():
    u = torch.tensor([[0.3, float("inf"), -0.2]], dtype=torch.float64, requires_grad=True)
    available = torch.tensor([[True, False, True]])
    logits = torch.tensor([[0.1, 0.0, -0.5]], dtype=torch.float64, requires_grad=True)
    log_pi = host_math.confidence_log_weights(logits, available)
    host_math.mixture_uncertainty(log_pi, u).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(u.grad).all()


def test_row_weights_mean_one_and_order():
    gen = torch.Generator().manual_seed(9)
    ubar = torch.randn(13, generator=gen, dtype=torch.float64)
    for tau in (0.5, 1.0, 3.0):
        w = host_math.row_weights(ubar, tau)
        assert w.sum().item() == pytest.approx(13.0, rel=1e-12)
        torch.testing.assert_close(w, 13 * torch.softmax(-ubar / tau, 0))
        # More confident rows (lower ubar) weigh more.
        assert torch.equal(torch.argsort(w), torch.argsort(-ubar))
    with pytest.raises(ValueError, match="tau"):
        host_math.row_weights(ubar, tau=-1.0)


# ---------------------------------------------------------------------------- gamma scales


def test_gamma_scales_shape_and_nu_gradients():
    nu = torch.tensor([[2.5, 6.0, 40.0], [3.0, 9.0, 120.0]], requires_grad=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        w = host_math.gamma_scales(nu, 64)
    assert w.shape == (2, 3, 64) and (w > 0).all()
    (grad,) = torch.autograd.grad(w.sum(), nu)
    assert torch.isfinite(grad).all() and (grad != 0).all()
    with pytest.raises(ValueError, match="num_samples"):
        host_math.gamma_scales(nu, 0)
