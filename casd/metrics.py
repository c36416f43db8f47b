"""Evaluation metrics with the semantics of MMSA's ``MMSA/utils/metricsTop.py`` (formulation §7).

MMSA is the standard every multimodal sentiment paper compares against, so the decisions
that change a number follow it exactly:

- MOSI / MOSEI regression: ``Has0`` binarises with ``>= 0`` on all samples (a label of 0
  counts as positive); ``Non0`` keeps only samples whose *label* is non-zero and binarises
  with ``> 0`` (a prediction of exactly 0 counts as negative there). ``Mult_acc_7`` and
  ``Mult_acc_5`` clip predictions and labels to [-3, 3] and [-2, 2], then compare
  ``np.round`` values for exact equality (``np.round`` rounds half to even: 2.5 -> 2,
  -0.5 -> -0, 1.5 -> 2). ``MAE`` and ``Corr`` (``np.corrcoef``) use the unclipped values.
- SIMS regression: predictions and labels are first clipped to [-1, 1] (MAE and Corr use
  the clipped values too), then binned with half-open intervals (lo, hi]:
  2 classes {[-1, 0], (0, 1]}, 3 classes {[-1, -0.1], (-0.1, 0.1], (0.1, 1]},
  5 classes {[-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1]}.
  ``F1_score`` is the weighted F1 of the 2-class bins.
  MMSA compares each array with the bin edges in that array's own dtype (numpy casts the
  Python float edge to float32 for a float32 array), and float32(0.1) > 0.1, float32(-0.7)
  > -0.7: a float32 value at an edge lands in a different bin than its float64 upcast
  would. The edges here are cast to each array's dtype, so float32 inputs bin exactly
  as in MMSA.
- F1 is ``sklearn.metrics.f1_score(y_true, y_pred, average=...)`` re-implemented in numpy:
  the classes are the union of those in ``y_true`` and ``y_pred``; a class never predicted
  (or never true) has F1 = 0 (sklearn's ``zero_division`` default, with its warning
  dropped); ``weighted`` weights each class by its support in ``y_true``, ``macro`` is the
  plain mean over the classes.

Deliberate differences from MMSA, none of which changes a well-defined number:

- No rounding to 4 decimals: MMSA rounds for display only; callers round when printing.
- MAE is averaged in float64 (MMSA averages float32 differences in float32: ~1e-7 apart).
- ``Corr`` is NaN (no warning) when predictions or labels are constant or N = 1, as
  ``np.corrcoef`` gives; callers must treat NaN as "undefined", not as a crash.
- If every label is 0, the ``Non0`` subset is empty: MMSA raises IndexError, here
  ``Non0_acc_2`` and ``Non0_F1_score`` are NaN.
- Inputs are checked: NaN/inf, length mismatch, empty input or an unknown data set raise
  ValueError with a message naming the argument.

Inputs may be numpy arrays, torch tensors (any device, with or without grad) or sequences,
of shape [N] or [N, 1]. float16/bfloat16 are upcast exactly to float32; integer and bool
inputs become float64.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from casd.vocab import DATASETS, TASKS

__all__ = [
    "regression_metrics",
    "classification_metrics",
    "compute_metrics",
    "higher_is_better",
    "sweep_summary",
    "accuracy",
    "f1_score",
    "average_ranks",
    "spearman",
]


MOSI_METRICS = (
    "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
    "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
)
SIMS_METRICS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
CLASSIFICATION_METRICS = ("Acc", "F1_weighted", "F1_macro")
_LOWER_IS_BETTER = frozenset({"MAE"})
_KNOWN_METRICS = frozenset(MOSI_METRICS + SIMS_METRICS + CLASSIFICATION_METRICS)

# MMSA's SIMS bin edges; bin i is (edges[i], edges[i+1]]. The outer edges sit outside [-1, 1]
# so that every clipped value falls in some bin.
_SIMS_EDGES = {
    2: (-1.01, 0.0, 1.01),
    3: (-1.01, -0.1, 0.1, 1.01),
    5: (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}


# ---------------------------------------------------------------------------- inputs


def _to_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # numpy has no bfloat16; float32 holds both exactly
        return x.numpy()
    array = np.asarray(x)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _as_vector(x: object, name: str) -> np.ndarray:
    """[N] or [N, 1] numbers -> a 1-D float32/float64 array (dtype kept for the bin edges)."""
    array = _to_numpy(x)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape [N] or [N, 1], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf (at index {int(np.argmin(np.isfinite(array)))})")
    return array


def _check_lengths(preds: np.ndarray, labels: np.ndarray, preds_name: str) -> None:
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{preds_name} and labels must have the same length, got {preds.shape[0]} and {labels.shape[0]}"
        )


def _class_ids(x: np.ndarray, name: str) -> np.ndarray:
    """Integer class ids from an int array or an integral-valued float array."""
    if x.dtype.kind == "f":
        if not np.array_equal(x, np.round(x)):
            raise ValueError(f"{name} must hold integer class ids, got non-integral values")
    return x.astype(np.int64)


# ---------------------------------------------------------------------------- building blocks


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches (``sklearn.metrics.accuracy_score``); NaN for empty input."""
    if y_true.shape[0] == 0:
        return math.nan
    return float(np.mean(y_true == y_pred))


def f1_score(y_true: np.ndarray, y_pred: np.ndarray, average: str = "weighted") -> float:
    """``sklearn.metrics.f1_score(y_true, y_pred, average=average)`` for 'weighted' / 'macro'.

    Per class c: F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) = 2 TP_c / (n_true_c + n_pred_c),
    over the classes present in either array, so the denominator is never 0; a class with
    TP_c = 0 gets 0, which is what sklearn returns (with a warning) when precision or
    recall is ill-defined. NaN for empty input.
    """
    if average not in ("weighted", "macro"):
        raise ValueError(f"average must be 'weighted' or 'macro', got {average!r}")
    if y_true.shape[0] == 0:
        return math.nan
    classes, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    true_ids, pred_ids = inverse[: y_true.shape[0]], inverse[y_true.shape[0]:]
    n_classes = classes.shape[0]
    n_true = np.bincount(true_ids, minlength=n_classes)
    n_pred = np.bincount(pred_ids, minlength=n_classes)
    tp = np.bincount(true_ids[true_ids == pred_ids], minlength=n_classes)
    per_class = 2.0 * tp / (n_true + n_pred)
    if average == "macro":
        return float(per_class.mean())
    return float(np.sum(per_class * n_true) / np.sum(n_true))


def _round_match_accuracy(preds: np.ndarray, labels: np.ndarray, bound: float) -> float:
    """MMSA's Mult_acc: clip both to [-bound, bound], round half to even, exact match."""
    return accuracy(np.round(np.clip(labels, -bound, bound)), np.round(np.clip(preds, -bound, bound)))


def _sims_bins(x: np.ndarray, classes: int) -> np.ndarray:
    # Inner edges in x's own dtype, as numpy compares them in MMSA (see the module docstring).
    inner = np.asarray(_SIMS_EDGES[classes][1:-1], dtype=x.dtype)
    # side="left": index i with inner[i-1] < x <= inner[i], i.e. the (lo, hi] bin.
    return np.searchsorted(inner, x, side="left")


def _correlation(preds: np.ndarray, labels: np.ndarray) -> float:
    # np.corrcoef warns and returns NaN for constant input or N = 1; NaN is the answer.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.corrcoef(preds.astype(np.float64), labels.astype(np.float64))[0, 1])


def _mae(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.abs(preds.astype(np.float64) - labels.astype(np.float64))))


def average_ranks(x: object) -> np.ndarray:
    """1-based ranks of a vector in float64; tied values share the mean of the ranks they span
    (``scipy.stats.rankdata(x, method="average")``)."""
    values = _as_vector(x, "x").astype(np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Runs of equal values over sorted positions [s, e) get the rank (s + 1 + e) / 2.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.shape[0]]
    ranks = np.empty_like(values)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def spearman(x: object, y: object) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of x and y
    (``scipy.stats.spearmanr(x, y).correlation``); NaN when x or y is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    _check_lengths(rx, ry, "x")
    return _correlation(rx, ry)


# ---------------------------------------------------------------------------- public metrics


def _check_dataset(dataset: str) -> str:
    key = dataset.lower() if isinstance(dataset, str) else dataset
    if key not in DATASETS:
        raise ValueError(f"unknown regression dataset {dataset!r}; choose one of {DATASETS}")
    return key


def regression_metrics(preds: object, labels: object, dataset: str = "mosi") -> dict[str, float]:
    """MMSA regression metrics (unrounded) for 'mosi' / 'mosei' (same metrics) or 'sims'.

    mosi/mosei -> Has0_acc_2, Has0_F1_score, Non0_acc_2, Non0_F1_score, Mult_acc_5,
    Mult_acc_7, MAE, Corr. sims -> Mult_acc_2, Mult_acc_3, Mult_acc_5, F1_score, MAE, Corr.
    """
    key = _check_dataset(dataset)
    preds_np = _as_vector(preds, "preds")
    labels_np = _as_vector(labels, "labels")
    _check_lengths(preds_np, labels_np, "preds")
    if key == "sims":
        return _sims_regression(preds_np, labels_np)
    return _mosi_regression(preds_np, labels_np)


def _mosi_regression(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    has0_true, has0_pred = labels >= 0, preds >= 0
    non_zero = labels != 0
    non0_true, non0_pred = labels[non_zero] > 0, preds[non_zero] > 0
    return {
        "Has0_acc_2": accuracy(has0_true, has0_pred),
        "Has0_F1_score": f1_score(has0_true, has0_pred, "weighted"),
        "Non0_acc_2": accuracy(non0_true, non0_pred),
        "Non0_F1_score": f1_score(non0_true, non0_pred, "weighted"),
        "Mult_acc_5": _round_match_accuracy(preds, labels, 2.0),
        "Mult_acc_7": _round_match_accuracy(preds, labels, 3.0),
        "MAE": _mae(preds, labels),
        "Corr": _correlation(preds, labels),
    }


def _sims_regression(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds, labels = np.clip(preds, -1.0, 1.0), np.clip(labels, -1.0, 1.0)
    true_bins = {c: _sims_bins(labels, c) for c in _SIMS_EDGES}
    pred_bins = {c: _sims_bins(preds, c) for c in _SIMS_EDGES}
    return {
        "Mult_acc_2": accuracy(true_bins[2], pred_bins[2]),
        "Mult_acc_3": accuracy(true_bins[3], pred_bins[3]),
        "Mult_acc_5": accuracy(true_bins[5], pred_bins[5]),
        "F1_score": f1_score(true_bins[2], pred_bins[2], "weighted"),
        "MAE": _mae(preds, labels),
        "Corr": _correlation(preds, labels),
    }


def classification_metrics(logits_or_pred_ids: object, labels: object) -> dict[str, float]:
    """Acc, F1_weighted, F1_macro from logits [N, C] (argmax; ties -> lowest index) or ids [N].

    Labels are class ids [N] or [N, 1] (integers, or floats with integral values). The F1
    classes are those present in labels or predictions, as in sklearn.
    """
    scores = _to_numpy(logits_or_pred_ids)
    if scores.ndim == 2 and scores.shape[1] > 1:
        if scores.dtype.kind not in "biuf":
            raise TypeError(f"logits must hold real numbers, got dtype {scores.dtype}")
        if scores.shape[0] == 0:
            raise ValueError("logits_or_pred_ids is empty; metrics need at least one sample")
        if not np.isfinite(scores).all():
            raise ValueError("logits_or_pred_ids contains NaN or inf")
        pred_ids = np.argmax(scores, axis=1).astype(np.int64)
    else:
        pred_ids = _class_ids(_as_vector(scores, "logits_or_pred_ids"), "logits_or_pred_ids")
    true_ids = _class_ids(_as_vector(labels, "labels"), "labels")
    _check_lengths(pred_ids, true_ids, "logits_or_pred_ids")
    return {
        "Acc": accuracy(true_ids, pred_ids),
        "F1_weighted": f1_score(true_ids, pred_ids, "weighted"),
        "F1_macro": f1_score(true_ids, pred_ids, "macro"),
    }


def compute_metrics(preds: object, labels: object, dataset: str, task: str) -> dict[str, float]:
    """Dispatch on task: 'regression' (dataset picks MOSI/MOSEI vs SIMS) or 'classification'.

    Classification metrics do not depend on the data set, so any dataset name is accepted there.
    """
    if task == "regression":
        return regression_metrics(preds, labels, dataset)
    if task == "classification":
        return classification_metrics(preds, labels)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def higher_is_better(metric_name: str) -> bool:
    """Direction for model selection: MAE is an error (lower is better), the rest are scores.

    Only the names these functions return are accepted, so a typo cannot silently select
    the worst model.
    """
    if metric_name not in _KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric_name!r}; known metrics: {sorted(_KNOWN_METRICS)}")
    return metric_name not in _LOWER_IS_BETTER


def sweep_summary(
    rates: Sequence[float], values: Sequence[float], *, normalise: bool = True
) -> dict[str, float]:
    """Summarise one metric over a missing-rate sweep: {"mean": ..., "auc": ...}.

    ``mean`` is the plain mean of the values. ``auc`` is the trapezoid-rule area under the
    piecewise-linear metric-versus-rate curve over the given (strictly increasing) rates.
    With ``normalise=True`` (the default) the area is divided by the rate span
    ``rates[-1] - rates[0]``, so ``auc`` is the curve's average height, in the metric's own
    units and comparable across rate grids (a constant curve c gives auc = c). On the
    standard grid r = 0.0, ..., 0.9 the raw area (``normalise=False``) is 0.9 times that.
    The two differ from ``mean`` only in that the end points get half weight. A NaN value
    makes both results NaN.
    """
    r = np.asarray(rates, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if r.ndim != 1 or v.ndim != 1:
        raise ValueError(f"rates and values must be 1-D, got shapes {list(r.shape)} and {list(v.shape)}")
    if r.shape != v.shape:
        raise ValueError(f"rates and values must have the same length, got {r.shape[0]} and {v.shape[0]}")
    if r.shape[0] < 2:
        raise ValueError(f"a sweep needs at least two rates for an area, got {r.shape[0]}")
    if not np.isfinite(r).all() or not (np.diff(r) > 0).all():
        raise ValueError(f"rates must be finite and strictly increasing, got {r.tolist()}")
    area = float(np.sum(np.diff(r) * (v[1:] + v[:-1]) / 2.0))
    if normalise:
        area /= float(r[-1] - r[0])
    return {"mean": float(np.mean(v)), "auc": area}
