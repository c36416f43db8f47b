"""The study's statistics: paired t-test p-values (no scipy at run time) and the uncertainty summary."""
import math

import numpy as np
import pytest

from casd.study.reporting import paired_t_pvalue, uncertainty_summary

scipy_stats = pytest.importorskip("scipy.stats")


def test_paired_t_pvalue_matches_scipy(gen):
    rng = np.random.default_rng(int(gen.initial_seed()) % 2**32)
    for n in (2, 3, 5, 10, 40):
        for shift in (0.0, 0.3, 2.0, 30.0):
            d = rng.standard_normal(n) + shift
            assert paired_t_pvalue(d) == pytest.approx(scipy_stats.ttest_1samp(d, 0.0).pvalue, rel=1e-9, abs=1e-14)


def test_paired_t_pvalue_edge_cases():
    assert math.isnan(paired_t_pvalue([0.1]))
    assert paired_t_pvalue([0.25, 0.25, 0.25]) == 0.0  # same sign, no spread
    assert paired_t_pvalue([0.0, 0.0]) == 1.0
    assert paired_t_pvalue([1.0, -1.0, 1.0, -1.0]) == pytest.approx(1.0)


def _report(rho, oracle, rises):
    return {"summary": {"model": {"spearman": rho, "pooled_spearman": rho + 0.1, "confident_half_ratio": 0.9,
                                  "aurc_normalised": 0.8},
                        "oracle": {"spearman": oracle}, "spearman_ratio_to_oracle": rho / oracle,
                        "frame_trend": {"ubar_rises": rises}}}


def test_uncertainty_summary_over_seeds():
    summary = uncertainty_summary([_report(0.1, 0.2, True), _report(0.2, 0.2, False)])
    assert summary["spearman"]["mean"] == pytest.approx(0.15)
    assert summary["spearman_ratio_to_oracle"]["values"] == pytest.approx([0.5, 1.0])
    assert summary["ubar_rises"] == 1
    assert uncertainty_summary([_report(0.1, 0.2, True), None]) is None  # late fusion has no uncertainty
