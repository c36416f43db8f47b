"""casd.uncertainty_metrics: hand-computed cases, scipy cross-checks and ranking properties."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from casd.metrics import average_ranks, spearman
from casd.uncertainty_metrics import (
    UNCERTAINTY_METRICS,
    aurc,
    confident_fraction_ratio,
    per_sample_risk,
    risk_coverage,
    uncertainty_metrics,
)

scipy_stats = pytest.importorskip("scipy.stats")


# ---------------------------------------------------------------------------- hand-computed cases


def test_perfect_ranking_by_hand():
    # Keep the most confident k: R(1) = 0, R(2) = 0.5, R(3) = 1 -> AURC 0.5 = the optimum.
    coverage, selective = risk_coverage([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    np.testing.assert_allclose(coverage, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(selective, [0.0, 0.5, 1.0])
    result = aurc([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert result["aurc"] == pytest.approx(0.5)
    assert result["aurc_optimal"] == pytest.approx(0.5)
    assert result["aurc_random"] == pytest.approx(1.0)
    assert result["e_aurc"] == pytest.approx(0.0)
    assert result["aurc_normalised"] == pytest.approx(0.0)
    assert spearman([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx(1.0)
    # Most confident half of 3 is ceil(1.5) = 2 samples: R(2) / mean = 0.5 / 1.
    assert confident_fraction_ratio([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx(0.5)


def test_reversed_ranking_by_hand():
    # R(1) = 2, R(2) = 1.5, R(3) = 1 -> AURC 1.5; normalised (1.5 - 0.5) / (1 - 0.5) = 2.
    result = aurc([3.0, 2.0, 1.0], [0.0, 1.0, 2.0])
    assert result["aurc"] == pytest.approx(1.5)
    assert result["aurc_normalised"] == pytest.approx(2.0)
    assert spearman([3.0, 2.0, 1.0], [0.0, 1.0, 2.0]) == pytest.approx(-1.0)
    assert confident_fraction_ratio([3.0, 2.0, 1.0], [0.0, 1.0, 2.0]) == pytest.approx(1.5)


def test_ties_are_averaged_by_hand():
    # u = (1, 1, 2), r = (0, 2, 1): the tied pair has mean risk 1, so R(1) = 1 (expected over
    # the two orders: (0 + 2) / 2), R(2) = (0 + 2) / 2 = 1, R(3) = 1.
    np.testing.assert_allclose(risk_coverage([1.0, 1.0, 2.0], [0.0, 2.0, 1.0])[1], [1.0, 1.0, 1.0])
    # u = (0, 1, 1, 1), r = (4, 0, 3, 0): R(1) = 4, R(2) = (4 + 1) / 2, R(3) = (4 + 2) / 3, R(4) = 7/4.
    np.testing.assert_allclose(risk_coverage([0.0, 1.0, 1.0, 1.0], [4.0, 0.0, 3.0, 0.0])[1],
                               [4.0, 2.5, 2.0, 1.75])


def test_average_ranks_by_hand():
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5]), [2.0, 3.5, 3.5, 1.0])
    np.testing.assert_array_equal(average_ranks([7.0, 7.0, 7.0]), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(average_ranks([3.0]), [1.0])


def test_constant_uncertainty_is_a_coin():
    risk = np.array([0.3, 1.2, 0.0, 2.5, 0.7])
    result = uncertainty_metrics(np.full(5, 0.4), risk, np.zeros(5))
    assert result["aurc"] == pytest.approx(risk.mean())
    assert result["aurc_normalised"] == pytest.approx(1.0)
    assert result["confident_half_ratio"] == pytest.approx(1.0)
    assert math.isnan(result["spearman"])  # undefined for constant input, as in scipy
    assert result["mean_uncertainty"] == pytest.approx(0.4)
    assert set(result) == set(UNCERTAINTY_METRICS)


def test_zero_risk_is_undefined_not_a_crash():
    result = aurc([0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    assert result["aurc"] == 0.0 and math.isnan(result["aurc_normalised"])
    assert math.isnan(confident_fraction_ratio([0.1, 0.2, 0.3], [0.0, 0.0, 0.0]))


def test_classification_risk_is_zero_one():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 5.0, 1.0]])
    np.testing.assert_array_equal(per_sample_risk(logits, [0, 1, 1], "classification"), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(per_sample_risk([0, 2, 1], [0, 1, 1], "classification"), [0.0, 1.0, 0.0])
    result = uncertainty_metrics([0.1, 0.9, 0.2], logits, [0, 1, 1], task="classification")
    assert result["aurc_normalised"] == pytest.approx(0.0)  # the wrong one is the least sure


def test_regression_risk_and_torch_inputs():
    preds, labels = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[1.0], [-1.0], [0.0]])
    np.testing.assert_allclose(per_sample_risk(preds, labels), [0.5, 0.0, 2.0])
    result = uncertainty_metrics(torch.tensor([0.2, 0.1, 0.3]), preds, labels)
    assert result["spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [
    lambda: aurc([0.1, 0.2], [1.0]),
    lambda: spearman([0.1, float("nan")], [1.0, 2.0]),
    lambda: uncertainty_metrics([0.1], [1.0], [1.0], task="ranking"),
    lambda: confident_fraction_ratio([0.1], [1.0], fraction=0.0),
    lambda: risk_coverage([], []),
])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        bad()


# ---------------------------------------------------------------------------- cross-checks


def test_spearman_matches_scipy_with_ties(gen):
    for n in (2, 7, 50, 501):
        x = torch.randint(0, 5, (n,), generator=gen).numpy().astype(float)  # many ties
        y = torch.randn(n, generator=gen).numpy()
        y[: n // 3] = 0.25  # ties in y as well
        expected = scipy_stats.spearmanr(x, y).statistic
        if np.isnan(expected):
            assert math.isnan(spearman(x, y))
        else:
            assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
        np.testing.assert_allclose(average_ranks(x), scipy_stats.rankdata(x, method="average"))


def test_tie_averaging_equals_mean_over_orders(gen):
    """R(k) is the mean over every order of the tied samples (brute force on small inputs)."""
    for _ in range(5):
        u = torch.randint(0, 3, (6,), generator=gen).numpy().astype(float)
        r = torch.rand(6, generator=gen).numpy()
        curves = []
        for perm in itertools.permutations(range(6)):
            perm = np.array(perm)
            # a strict order that respects u and breaks its ties by perm
            order = np.lexsort((perm, u))
            curves.append(np.cumsum(r[order]) / np.arange(1, 7))
        np.testing.assert_allclose(risk_coverage(u, r)[1], np.mean(curves, axis=0), atol=1e-12)


# ---------------------------------------------------------------------------- properties

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, st.floats(0, 1e3)), min_size=1, max_size=40), st.randoms())
def test_ranking_properties(pairs, rnd):
    u = np.array([p[0] for p in pairs])
    r = np.array([p[1] for p in pairs])
    result = aurc(u, r)
    # The ideal ranking bounds every ranking from below, the reversed ideal from above.
    worst = aurc(-r, r)["aurc"]
    assert result["aurc_optimal"] - 1e-9 <= result["aurc"] <= worst + 1e-9 * (1 + worst)
    assert aurc(r, r)["aurc"] == pytest.approx(result["aurc_optimal"])
    if result["aurc_random"] > result["aurc_optimal"]:
        assert aurc(r, r)["aurc_normalised"] == pytest.approx(0.0, abs=1e-9)
    # Only the order of u matters, not its scale or the order of the samples.
    perm = np.array(rnd.sample(range(len(u)), len(u)))
    assert aurc(u[perm], r[perm])["aurc"] == pytest.approx(result["aurc"])
    # (ranks and doubling preserve order exactly; exp or cubes would merge tiny values in float)
    assert aurc(average_ranks(u), r)["aurc"] == pytest.approx(result["aurc"])
    assert aurc(2.0 * u, r)["aurc"] == pytest.approx(result["aurc"])
    # The curve ends at the mean risk (full coverage).
    assert risk_coverage(u, r)[1][-1] == pytest.approx(r.mean(), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=40))
def test_spearman_properties(pairs):
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    rho = spearman(x, y)
    if not math.isnan(rho):
        assert -1 - 1e-12 <= rho <= 1 + 1e-12
        assert spearman(y, x) == pytest.approx(rho)
        assert spearman(-x, y) == pytest.approx(-rho, abs=1e-12)
        assert spearman(average_ranks(x), 2.0 * y) == pytest.approx(rho)  # only the order matters
