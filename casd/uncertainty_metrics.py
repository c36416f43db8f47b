"""How well a per-sample uncertainty score ranks the errors it should predict (formulation §7).

A model that reports an uncertainty u_i with each prediction is useful when the samples it is
sure about are the ones it gets right. Three numbers say how well u ranks the per-sample risk
r_i (|prediction - label| for regression, 0/1 error for classification); all treat larger u as
"less sure" and use only the order of u, never its scale:

- ``spearman``: Spearman's rank correlation of (u, r) (``casd.metrics.spearman``, the one
  implementation in casd: the Pearson correlation of average ranks, as scipy computes it).
  +1: u orders the errors perfectly; 0: no information. NaN when u or r is constant.
- ``aurc``: area under the risk-coverage curve (Geifman & El-Yaniv, "Selective classification
  for deep neural networks", NeurIPS 2017; AURC and E-AURC as in Geifman, Uziel & El-Yaniv,
  "Bias-reduced uncertainty estimation for deep neural classifiers", ICLR 2019). Keep the k
  samples with the smallest u; the selective risk R(k) is their mean risk. With N samples

      AURC = (1/N) sum_{k=1..N} R(k)              (lower is better; units of r)

  ``aurc_optimal`` is the AURC of the ideal ranking (u = r itself) and ``aurc_random`` = mean(r)
  the expected AURC of a random ranking (every R(k) then has expectation mean(r)). The
  normalised excess

      aurc_normalised = (AURC - AURC_opt) / (AURC_random - AURC_opt)

  is scale-free: 0 for a perfect ranking, 1 for an uninformative one (constant u gives exactly
  1), above 1 when u ranks the errors backwards. ``e_aurc`` = AURC - AURC_opt (Geifman 2019).
- ``confident_half_ratio``: mean risk of the most confident half of the samples over the mean
  risk of all (MAE ratio for regression): 1 is a coin, below 1 is useful. It is R(ceil(N/2))
  / mean(r), a point on the same curve. NaN when every risk is 0.

**Ties in u.** Which of several tied samples is "more confident" is arbitrary, so R(k) is
defined as its expectation over a uniformly random order within each group of tied u: if the
group spans sorted positions s+1..e and k lies in it, R(k) = (risk sum before the group +
(k - s) * group mean risk) / k. The numbers then do not depend on the input order, and
constant u gives R(k) = mean(r) for every k.

Inputs: numpy arrays, torch tensors or sequences of shape [N] (u, risk) with N >= 1 finite
values; classification predictions may be logits [N, C] (argmax) or class ids [N].
"""
from __future__ import annotations

import math

import numpy as np

from casd.metrics import _as_vector, _check_lengths, _class_ids, _to_numpy, spearman
from casd.vocab import TASKS

__all__ = [
    "UNCERTAINTY_METRICS",
    "risk_coverage",
    "aurc",
    "confident_fraction_ratio",
    "per_sample_risk",
    "uncertainty_metrics",
]

UNCERTAINTY_METRICS = (
    "spearman", "aurc", "aurc_optimal", "aurc_random", "e_aurc", "aurc_normalised",
    "confident_half_ratio", "mean_uncertainty",
)


def _pair(uncertainty: object, risk: object, risk_name: str = "risk") -> tuple[np.ndarray, np.ndarray]:
    u = _as_vector(uncertainty, "uncertainty").astype(np.float64)
    r = _as_vector(risk, risk_name).astype(np.float64)
    _check_lengths(u, r, "uncertainty")
    return u, r


def risk_coverage(uncertainty: object, risk: object) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/N, selective risk R(k)) for k = 1..N, ties in u averaged (module docstring)."""
    u, r = _pair(uncertainty, risk)
    n = u.shape[0]
    order = np.argsort(u, kind="stable")
    u_sorted, r_sorted = u[order], r[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    group_sum = np.add.reduceat(r_sorted, starts)
    before = np.r_[0.0, np.cumsum(group_sum)[:-1]]  # risk of every group ahead of this one
    group_of = np.repeat(np.arange(starts.shape[0]), ends - starts)  # group of sorted position
    k = np.arange(1, n + 1, dtype=np.float64)
    within = k - starts[group_of]  # how many of the group are kept at coverage k
    group_mean = group_sum / (ends - starts)
    selective = (before[group_of] + within * group_mean[group_of]) / k
    return k / n, selective


def aurc(uncertainty: object, risk: object) -> dict[str, float]:
    """AURC, its optimal and random references, E-AURC and the normalised excess (docstring)."""
    u, r = _pair(uncertainty, risk)
    value = float(np.mean(risk_coverage(u, r)[1]))
    optimal = float(np.mean(risk_coverage(r, r)[1]))  # ranking by the risk itself is ideal
    random = float(np.mean(r))
    spread = random - optimal
    return {
        "aurc": value,
        "aurc_optimal": optimal,
        "aurc_random": random,
        "e_aurc": value - optimal,
        "aurc_normalised": (value - optimal) / spread if spread > 0 else math.nan,
    }


def confident_fraction_ratio(uncertainty: object, risk: object, fraction: float = 0.5) -> float:
    """Mean risk of the ceil(fraction * N) most confident samples over the mean risk of all."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    u, r = _pair(uncertainty, risk)
    mean = float(np.mean(r))
    if mean == 0.0:
        return math.nan
    k = max(1, math.ceil(fraction * u.shape[0] - 1e-9))  # -1e-9: fraction * N may round up
    return float(risk_coverage(u, r)[1][k - 1]) / mean


def per_sample_risk(preds: object, labels: object, task: str = "regression") -> np.ndarray:
    """|prediction - label| (regression) or 0/1 error (classification; logits [N, C] or ids)."""
    if task == "regression":
        p, y = _as_vector(preds, "preds"), _as_vector(labels, "labels")
        _check_lengths(p, y, "preds")
        return np.abs(p.astype(np.float64) - y.astype(np.float64))
    if task == "classification":
        scores = _to_numpy(preds)
        if scores.ndim == 2 and scores.shape[1] > 1:
            if not np.isfinite(scores).all():
                raise ValueError("preds contains NaN or inf")
            pred_ids = np.argmax(scores, axis=1)
        else:
            pred_ids = _class_ids(_as_vector(scores, "preds"), "preds")
        true_ids = _class_ids(_as_vector(labels, "labels"), "labels")
        _check_lengths(pred_ids, true_ids, "preds")
        return (pred_ids != true_ids).astype(np.float64)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def uncertainty_metrics(uncertainty: object, preds: object, labels: object,
                        task: str = "regression") -> dict[str, float]:
    """Every number of ``UNCERTAINTY_METRICS`` for one condition (higher u = less sure)."""
    risk = per_sample_risk(preds, labels, task)
    u, risk = _pair(uncertainty, risk)
    return {
        "spearman": spearman(u, risk),
        **aurc(u, risk),
        "confident_half_ratio": confident_fraction_ratio(u, risk, 0.5),
        "mean_uncertainty": float(np.mean(u)),
    }
