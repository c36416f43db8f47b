"""casd.metrics against hand-computed cases, scikit-learn and an MMSA-style oracle.

The oracle below (``_mmsa_*``) restates MMSA's ``metricsTop`` step by step with the same
primitives MMSA uses (per-bin mask assignment loops, sklearn's accuracy_score / f1_score,
np.corrcoef, arithmetic in the inputs' own dtype), so the randomized tests compare our
numpy-only implementation with MMSA's semantics, including float32 bin edges.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from casd.metrics import (  # noqa: E402
    CLASSIFICATION_METRICS,
    MOSI_METRICS,
    SIMS_METRICS,
    _sims_bins,
    classification_metrics,
    compute_metrics,
    higher_is_better,
    regression_metrics,
    sweep_summary,
)

# ---------------------------------------------------------------------------- MMSA-style oracle


def _sk_f1(y_true, y_pred, average="weighted"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning: sklearn then returns 0
        return sklearn_metrics.f1_score(y_true, y_pred, average=average)


def _mmsa_multiclass_acc(y_pred, y_true):
    return np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true))


def _mmsa_mosi(preds, truth):
    """MMSA's MOSI/MOSEI regression metrics, unrounded."""
    mae = np.mean(np.absolute(preds - truth))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corr = np.corrcoef(preds, truth)[0][1]
    a7 = _mmsa_multiclass_acc(np.clip(preds, -3.0, 3.0), np.clip(truth, -3.0, 3.0))
    a5 = _mmsa_multiclass_acc(np.clip(preds, -2.0, 2.0), np.clip(truth, -2.0, 2.0))
    non_zeros = np.array([i for i, e in enumerate(truth) if e != 0])
    nz_truth, nz_preds = truth[non_zeros] > 0, preds[non_zeros] > 0
    binary_truth, binary_preds = truth >= 0, preds >= 0
    return {
        "Has0_acc_2": sklearn_metrics.accuracy_score(binary_preds, binary_truth),
        "Has0_F1_score": _sk_f1(binary_truth, binary_preds),
        "Non0_acc_2": sklearn_metrics.accuracy_score(nz_preds, nz_truth),
        "Non0_F1_score": _sk_f1(nz_truth, nz_preds),
        "Mult_acc_5": a5,
        "Mult_acc_7": a7,
        "MAE": mae,
        "Corr": corr,
    }


def _mmsa_bin(x, edges):
    out = x.copy()
    for i in range(len(edges) - 1):
        out[np.logical_and(x > edges[i], x <= edges[i + 1])] = i
    return out


def _mmsa_sims(preds, truth):
    """MMSA's SIMS regression metrics."""
    preds, truth = np.clip(preds, -1.0, 1.0), np.clip(truth, -1.0, 1.0)
    e2, e3, e5 = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01], [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, t2 = _mmsa_bin(preds, e2), _mmsa_bin(truth, e2)
    p3, t3 = _mmsa_bin(preds, e3), _mmsa_bin(truth, e3)
    p5, t5 = _mmsa_bin(preds, e5), _mmsa_bin(truth, e5)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corr = np.corrcoef(preds, truth)[0][1]
    return {
        "Mult_acc_2": _mmsa_multiclass_acc(p2, t2),
        "Mult_acc_3": _mmsa_multiclass_acc(p3, t3),
        "Mult_acc_5": _mmsa_multiclass_acc(p5, t5),
        "F1_score": _sk_f1(t2, p2),
        "MAE": np.mean(np.absolute(preds - truth)),
        "Corr": corr,
    }


def _assert_matches_oracle(ours, oracle, continuous_rtol):
    assert set(ours) == set(oracle)
    for name, expected in oracle.items():
        if name in ("MAE", "Corr"):
            assert ours[name] == pytest.approx(float(expected), rel=continuous_rtol, abs=1e-7, nan_ok=True), name
        else:  # decisions: counts over N, identical up to the last bit of the division
            assert ours[name] == pytest.approx(float(expected), rel=1e-12, abs=1e-12), name


# ---------------------------------------------------------------------------- hand-made cases


def test_mosi_hand_case_has0_vs_non0_and_halves():
    labels = [0.0, 0.0, 1.5, -0.5, 2.5, -3.4]
    preds = [0.0, -0.3, 2.4, 0.0, 2.6, -2.6]
    m = regression_metrics(preds, labels, "mosi")
    assert tuple(m) == MOSI_METRICS
    # Has0 (>= 0): truth T T T F T F, preds T F T T T F -> matches 1 0 1 0 1 1 = 4/6.
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # Class T: 4 true, 4 predicted, TP 3 -> F1 = 6/8. Class F: 2 true, 2 predicted, TP 1 -> 2/4.
    # Weighted by support: (4 * 0.75 + 2 * 0.5) / 6 = 4/6.
    assert m["Has0_F1_score"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # Non0 keeps labels 1.5, -0.5, 2.5, -3.4; (> 0): truth T F T F, preds 2.4 0.0 2.6 -2.6 -> T F T F.
    # The pred 0.0 at label -0.5 is wrong for Has0 but right for Non0.
    assert m["Non0_acc_2"] == 1.0
    assert m["Non0_F1_score"] == 1.0
    # Mult_acc_7: labels clip/round 0 0 2 -0 2 -3 (1.5 -> 2, 2.5 -> 2 half to even, -3.4 -> -3),
    # preds round 0 -0 2 0 3 -3 -> only the 2.5 vs 2.6 pair differs: 5/6 (half-up rounding gives 6/6).
    assert m["Mult_acc_7"] == pytest.approx(5 / 6)
    # Mult_acc_5 clips to [-2, 2] first: 2.5 and 2.6 both become 2, -3.4 and -2.6 both -2: 6/6.
    assert m["Mult_acc_5"] == 1.0
    # MAE on unclipped values: |diffs| 0, .3, .9, .5, .1, .8 -> 2.6 / 6.
    assert m["MAE"] == pytest.approx(2.6 / 6)
    x, y = np.array(preds), np.array(labels)
    dx, dy = x - x.mean(), y - y.mean()
    assert m["Corr"] == pytest.approx(np.sum(dx * dy) / math.sqrt(np.sum(dx**2) * np.sum(dy**2)))


def test_rounding_is_half_to_even_including_negative_zero():
    # np.round: 0.5 -> 0, -0.5 -> -0 (== 0), 1.5 -> 2, -2.5 -> -2. Preds round to 0, 0, 2, -2.
    m = regression_metrics([0.0, 0.4, 2.0, -2.0], [0.5, -0.5, 1.5, -2.5], "mosei")
    assert m["Mult_acc_7"] == 1.0
    assert m["Mult_acc_5"] == 1.0
    # Rounding half away from zero would give 1, -1, 2, -3 for the labels: only 1/4 matching.
    m = regression_metrics([1.0, -1.0, 2.0, -3.0], [0.5, -0.5, 1.5, -2.5], "mosi")
    assert m["Mult_acc_7"] == pytest.approx(1 / 4)


def test_all_zero_labels_give_nan_non0_and_defined_has0():
    # Labels 0 are positive for Has0 (>= 0): preds 0.1 (T), -0.2 (F), 0.0 (T) -> 2/3.
    m = regression_metrics([0.1, -0.2, 0.0], [0.0, 0.0, 0.0])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)
    # Only class T is true (support 3): 3 true, 2 predicted, TP 2 -> F1 = 4/5; F has support 0.
    assert m["Has0_F1_score"] == pytest.approx(4 / 5)
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert math.isnan(m["Corr"])  # constant labels


@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_constant_predictions_give_nan_corr_without_warnings(dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = regression_metrics(np.full(5, 0.3), [-0.5, 0.2, 0.9, -1.0, 0.4], dataset)
        single = regression_metrics([0.3], [0.2], dataset)
    assert math.isnan(m["Corr"]) and math.isnan(single["Corr"])
    # Everything else is still defined: |0.3 - y| = .8, .1, .6, 1.3, .1 -> 2.9 / 5 (nothing clipped).
    assert m["MAE"] == pytest.approx(2.9 / 5)
    assert all(not math.isnan(v) for k, v in m.items() if k != "Corr")


def test_sims_bins_at_the_edges():
    # Bins are (lo, hi]: an edge value belongs to the bin below it.
    x = np.array([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0])
    assert _sims_bins(x, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert _sims_bins(x, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert _sims_bins(x, 5).tolist() == [0, 0, 1, 2, 2, 3, 4]
    # float32 arrays compare with float32 edges (as numpy does in MMSA), so float32(-0.7) and
    # float32(0.1) sit on their edges too, although float64(float32(0.1)) > 0.1.
    x32 = x.astype(np.float32)
    assert _sims_bins(x32, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert _sims_bins(x32, 5).tolist() == [0, 0, 1, 2, 2, 3, 4]
    assert _sims_bins(x32.astype(np.float64), 5).tolist() == [0, 1, 1, 2, 3, 3, 4]


def test_sims_hand_case_clipping_and_float32_edges():
    labels = np.array([-1.0, -0.1, 0.0, 0.1, 0.7, 1.0])
    preds = np.array([-1.6, -0.15, 0.05, 0.1, 0.75, 1.8], dtype=np.float32)
    m = regression_metrics(preds, labels, "sims")
    assert tuple(m) == SIMS_METRICS
    # clipped preds -1, -0.15, 0.05, 0.1f, 0.75, 1.
    # 2 bins: labels 0 0 0 1 1 1; preds 0 0 1 1 1 1 -> 5/6.
    assert m["Mult_acc_2"] == pytest.approx(5 / 6)
    # 3 bins: labels 0 0 1 1 2 2; preds 0 0 1 1 2 2 (float32 0.1 is on its edge) -> 6/6.
    assert m["Mult_acc_3"] == 1.0
    # 5 bins: labels 0 1 2 2 3 4; preds 0 1 2 2 4 4 -> 5/6.
    assert m["Mult_acc_5"] == pytest.approx(5 / 6)
    # F1 of 2 bins: class 0: 3 true, 2 pred, TP 2 -> 4/5; class 1: 3 true, 4 pred, TP 3 -> 6/7.
    assert m["F1_score"] == pytest.approx((3 * 4 / 5 + 3 * 6 / 7) / 6)
    # MAE on clipped values: 0, .05, .05, ~0, .05, 0 -> 0.15 / 6.
    assert m["MAE"] == pytest.approx(0.15 / 6, abs=1e-7)


def test_torch_inputs_and_column_shape_match_numpy():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(-9, 10, (40,), generator=gen).float() / 3
    preds = (labels + torch.randn(40, generator=gen)).requires_grad_()
    for dataset in ("mosi", "sims"):
        from_torch = regression_metrics(preds[:, None], labels[:, None], dataset)
        from_numpy = regression_metrics(preds.detach().numpy(), labels.numpy(), dataset)
        assert from_torch == from_numpy
    half = regression_metrics(preds.detach().half(), labels.bfloat16(), "mosi")
    assert set(half) == set(MOSI_METRICS)


# ---------------------------------------------------------------------------- randomized cross-checks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_mosi_matches_mmsa_oracle(seed, dtype):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    # MOSI labels are averages of annotator scores: multiples of 1/3 (many 0s, many halves after
    # rounding); preds are continuous with some exact zeros and exact halves mixed in.
    labels = (rng.integers(-9, 10, n) / 3).astype(dtype)
    preds = np.clip(labels + rng.normal(0, 1.2, n), -3.5, 3.5).astype(dtype)
    specials = rng.choice(np.array([0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 3.0], dtype=dtype), n)
    mask = rng.random(n) < 0.2
    preds[mask] = specials[mask]
    _assert_matches_oracle(regression_metrics(preds, labels, "mosi"), _mmsa_mosi(preds, labels), 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_sims_matches_mmsa_oracle(seed, dtype):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 300))
    # SIMS labels are multiples of 0.2 in [-1, 1]; preds hit every bin edge now and then.
    labels = (rng.integers(-5, 6, n) / 5).astype(dtype)
    preds = (labels + rng.normal(0, 0.4, n)).astype(dtype)
    edges = np.array([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0], dtype=dtype)
    mask = rng.random(n) < 0.3
    preds[mask] = rng.choice(edges, n)[mask]
    _assert_matches_oracle(regression_metrics(preds, labels, "sims"), _mmsa_sims(preds, labels), 1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_classification_matches_sklearn(seed):
    rng = np.random.default_rng(200 + seed)
    n, classes = int(rng.integers(1, 60)), int(rng.integers(2, 7))
    labels = rng.integers(0, classes - 1, n)  # the last class is never true ...
    logits = rng.normal(size=(n, classes))
    logits[:, -1] += rng.random(n) < 0.2  # ... but sometimes predicted (F1 0, in the macro mean)
    pred_ids = logits.argmax(1)
    m = classification_metrics(torch.from_numpy(logits), labels.astype(np.float32)[:, None])
    assert tuple(m) == CLASSIFICATION_METRICS
    assert m["Acc"] == pytest.approx(sklearn_metrics.accuracy_score(labels, pred_ids), abs=1e-15)
    assert m["F1_weighted"] == pytest.approx(_sk_f1(labels, pred_ids, "weighted"), abs=1e-12)
    assert m["F1_macro"] == pytest.approx(_sk_f1(labels, pred_ids, "macro"), abs=1e-12)
    assert classification_metrics(pred_ids, labels) == m


def test_classification_hand_case():
    labels = [0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 3]
    m = classification_metrics(preds, labels)
    assert m["Acc"] == pytest.approx(3 / 5)
    # F1 per class = 2 TP / (n_true + n_pred): 0 -> 2/3, 1 -> 4/5, 2 -> 0 (never predicted),
    # 3 -> 0 (never true, support 0). Weighted by support 2, 2, 1, 0; macro over all four.
    assert m["F1_weighted"] == pytest.approx((2 * 2 / 3 + 2 * 4 / 5) / 5)
    assert m["F1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 4)


# ---------------------------------------------------------------------------- dispatch and errors


def test_compute_metrics_dispatch():
    preds, labels = [0.3, -0.2, 0.9], [0.2, -0.4, 1.0]
    assert compute_metrics(preds, labels, "MOSI", "regression") == regression_metrics(preds, labels, "mosi")
    assert set(compute_metrics(preds, labels, "sims", "regression")) == set(SIMS_METRICS)
    assert compute_metrics([0, 2], [0, 1], "iemocap", "classification") == classification_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="task"):
        compute_metrics(preds, labels, "mosi", "ranking")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: regression_metrics([0.1, 0.2], [0.1], "mosi"), "same length"),
        (lambda: regression_metrics([], [], "mosi"), "empty"),
        (lambda: regression_metrics([0.1], [0.1], "iemocap"), "dataset"),
        (lambda: regression_metrics([[0.1, 0.2]], [0.1], "mosi"), "preds must have shape"),
        (lambda: regression_metrics([0.1, float("nan")], [0.1, 0.2], "sims"), "preds contains NaN"),
        (lambda: regression_metrics([0.1, 0.2], [0.1, float("inf")], "mosi"), "labels contains NaN or inf"),
        (lambda: classification_metrics([0.5, 1.0], [0, 1]), "integer class ids"),
        (lambda: classification_metrics(np.zeros((3, 2)), [0, 1]), "same length"),
        (lambda: higher_is_better("mae"), "unknown metric"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_numeric_input_raises_type_error():
    with pytest.raises(TypeError, match="preds"):
        regression_metrics(["a", "b"], [0.1, 0.2])


def test_higher_is_better():
    assert higher_is_better("MAE") is False
    for name in set(MOSI_METRICS + SIMS_METRICS + CLASSIFICATION_METRICS) - {"MAE"}:
        assert higher_is_better(name) is True


# ---------------------------------------------------------------------------- sweep summary


def test_sweep_summary_trapezoid_on_uneven_grid():
    rates, values = [0.0, 0.1, 0.2, 0.4], [1.0, 0.8, 0.6, 0.2]
    # Trapezoids: 0.1 * (1 + .8)/2 + 0.1 * (.8 + .6)/2 + 0.2 * (.6 + .2)/2 = .09 + .07 + .08 = .24.
    raw = sweep_summary(rates, values, normalise=False)
    assert raw["auc"] == pytest.approx(0.24)
    assert raw["mean"] == pytest.approx(2.6 / 4)
    # Normalised by the span 0.4: the curve's average height.
    assert sweep_summary(rates, values)["auc"] == pytest.approx(0.24 / 0.4)


def test_sweep_summary_random_curve_and_constant():
    rng = np.random.default_rng(7)
    rates = np.round(np.arange(10) * 0.1, 1)
    values = rng.random(10)
    summary = sweep_summary(rates, values)
    assert summary["auc"] == pytest.approx(np.trapezoid(values, rates) / 0.9)
    assert summary["mean"] == pytest.approx(values.mean())
    assert sweep_summary(rates, np.full(10, 0.7))["auc"] == pytest.approx(0.7)
    assert math.isnan(sweep_summary([0.0, 0.5], [0.3, float("nan")])["auc"])


@pytest.mark.parametrize(
    "rates, values, match",
    [
        ([0.0, 0.2, 0.1], [1, 2, 3], "increasing"),
        ([0.0, 0.0], [1, 2], "increasing"),
        ([0.0, 0.1], [1, 2, 3], "same length"),
        ([0.0], [1], "at least two"),
    ],
)
def test_sweep_summary_rejects_bad_grids(rates, values, match):
    with pytest.raises(ValueError, match=match):
        sweep_summary(rates, values)


# ---------------------------------------------------------------------------- Spearman (no scipy at run time)


def test_average_ranks_share_ties():
    from casd.metrics import average_ranks

    np.testing.assert_array_equal(average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]), [4.0, 1.0, 4.0, 2.0, 4.0])
    np.testing.assert_array_equal(average_ranks(np.array([5], dtype=np.float32)), [1.0])


@pytest.mark.parametrize("seed", range(6))
def test_spearman_matches_scipy_with_and_without_ties(seed):
    from casd.metrics import spearman

    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    x = rng.normal(size=n).astype(np.float32)
    y = (0.5 * x + rng.normal(size=n)).astype(np.float32)
    if seed % 2:  # heavy ties, as a rounded uncertainty or noise level has
        x, y = np.round(x), np.round(y * 2) / 2
    expected = stats.spearmanr(x, y).correlation
    got = spearman(torch.as_tensor(x), y)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_spearman_of_a_constant_is_nan_without_warnings():
    from casd.metrics import spearman

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman([1.0, 1.0, 1.0], [0.1, 0.5, 0.2]))
    with pytest.raises(ValueError, match="same length"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])
