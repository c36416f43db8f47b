"""casd.uncertainty_report and its table on hand-made condition results (no training)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from casd.data import SyntheticConfig, evaluation_conditions
from casd.evaluate import ConditionResult
from casd.report import format_uncertainty_table
from casd.uncertainty_report import synthetic_oracle, uncertainty_report

CONFIG = SyntheticConfig(num_train=4, num_valid=4, num_test=400)
CONDITIONS = evaluation_conditions(1111)


def _results(outputs, uncertainties, labels):
    k = 7
    return [ConditionResult(c, {}, outputs[c.name], uncertainties[c.name], np.full((len(labels), k), 1 / k), labels)
            for c in CONDITIONS]


@pytest.fixture(scope="module")
def oracle_like():
    """Predictions whose errors scale with the oracle's posterior std; uncertainty = that variance."""
    from casd.data import generate_synthetic

    labels = generate_synthetic(CONFIG)["test"]["regression_labels"]
    oracle = synthetic_oracle(CONFIG, "test", CONDITIONS)
    rng = np.random.default_rng(0)
    outputs = {n: (labels + np.sqrt(v) * rng.standard_normal(len(labels))).astype(np.float32)
               for n, v in oracle.items()}
    return outputs, oracle, labels


def test_a_model_that_reports_the_oracle_matches_it(oracle_like):
    outputs, oracle, labels = oracle_like
    report = uncertainty_report(_results(outputs, oracle, labels), "regression", oracle)
    summary = report["summary"]
    assert summary["spearman_ratio_to_oracle"] == pytest.approx(1.0)
    assert summary["model"]["spearman"] > 0.2  # errors scale with the reported spread
    assert summary["model"]["confident_half_ratio"] < 0.9
    assert summary["frame_trend"]["ubar_rises"]  # the oracle's variance grows with the frame rate
    assert len(report["conditions"]) == 17
    table = format_uncertainty_table(report)
    assert "oracle rho" in table and "-> rises" in table and "modality_tav" in table


def test_uninformative_uncertainty_without_oracle(oracle_like):
    outputs, oracle, labels = oracle_like
    rng = np.random.default_rng(1)
    noise = {n: rng.standard_normal(len(labels)) - 0.01 * i for i, n in enumerate(oracle)}  # falls with r
    report = uncertainty_report(_results(outputs, noise, labels), "regression", None)
    summary = report["summary"]
    assert "oracle" not in summary and "spearman_ratio_to_oracle" not in summary
    assert abs(summary["model"]["spearman"]) < 0.05  # 17 x 400 samples: sd ~0.012
    assert summary["model"]["confident_half_ratio"] == pytest.approx(1.0, abs=0.05)
    assert not summary["frame_trend"]["ubar_rises"]
    assert "oracle" not in format_uncertainty_table(report)


def test_no_uncertainty_no_report(oracle_like):
    outputs, oracle, labels = oracle_like
    nan = {n: np.full(len(labels), math.nan) for n in oracle}  # late fusion reports none
    assert uncertainty_report(_results(outputs, nan, labels)) is None
    assert synthetic_oracle(None, "test", CONDITIONS) is None  # MMSA data: no oracle
