"""Does a run's uncertainty predict its errors? Per condition, the model's and the oracle's figures.

For every evaluation condition this computes, from the model's own predictions, the numbers
of ``casd.uncertainty_metrics`` for the model's per-sample uncertainty ubar (formulation §3)
and, on the synthetic data, for the oracle's posterior variance (``casd.data.oracle``,
docs/data.md) ranking the *same* predictions' errors: the reference a learned uncertainty is
compared with. For MMSA data there is no oracle and only the model's numbers are reported.

The summary holds what issue 11's targets read off (formulation §7):

- ``spearman``: mean over the conditions of Spearman(ubar, |error|), and the ratio of the
  model's to the oracle's (``spearman_ratio_to_oracle``);
- ``confident_half_ratio``: mean over the conditions of (MAE of the most confident half) /
  (MAE of all);
- ``aurc_normalised``: mean normalised excess AURC (0 ideal, 1 a coin);
- ``pooled_spearman``: one Spearman over every condition's samples together;
- ``frame_trend``: mean ubar per frame missing rate, its slope and its Spearman with the rate;
  ``ubar_rises`` when the slope is positive and the rank correlation is at least
  ``RISING_RANK_CORRELATION`` (more missing frames should mean less sure).

Models without an uncertainty (late fusion: NaN) get no report (``None``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from casd.data import EvalCondition, SyntheticConfig, generate_synthetic
from casd.data.oracle import oracle_variance
from casd.evaluate import ConditionResult
from casd.metrics import spearman
from casd.uncertainty_metrics import per_sample_risk, uncertainty_metrics

__all__ = ["RISING_RANK_CORRELATION", "SUMMARISED", "oracle_uncertainties", "synthetic_oracle",
           "uncertainty_report"]

# "Rises with the rate": Spearman(r, mean ubar) over the frame sweep at least this high.
RISING_RANK_CORRELATION = 0.9
# The per-condition numbers averaged over the conditions in the summary.
SUMMARISED = ("spearman", "aurc_normalised", "confident_half_ratio")


def oracle_uncertainties(raw_split: dict, config: SyntheticConfig,
                         conditions: Sequence[EvalCondition]) -> dict[str, np.ndarray]:
    """The oracle's Var(s | x) per sample under each condition, by condition name."""
    return {c.name: oracle_variance(raw_split, config, c) for c in conditions}


def synthetic_oracle(config: SyntheticConfig | None, split: str,
                     conditions: Sequence[EvalCondition]) -> dict[str, np.ndarray] | None:
    """The oracle of ``split`` of the synthetic data ``config`` generates; None for MMSA data."""
    if config is None:
        return None
    return oracle_uncertainties(generate_synthetic(config)[split], config, conditions)


def _rate_trend(rates: list[float], ubar: list[float]) -> dict:
    if len(rates) < 2:
        return {}
    rho = spearman(rates, ubar) if np.ptp(ubar) > 0 else math.nan
    slope = float(np.polyfit(rates, ubar, 1)[0])
    return {
        "rates": rates, "mean_uncertainty": ubar, "spearman_rate_uncertainty": rho, "slope": slope,
        "strictly_increasing": bool(np.all(np.diff(ubar) > 0)),
        "ubar_rises": bool(slope > 0 and rho >= RISING_RANK_CORRELATION),
    }


def uncertainty_report(results: Sequence[ConditionResult], task: str = "regression",
                       oracle: dict[str, np.ndarray] | None = None) -> dict | None:
    """Per condition the model's (and the oracle's) uncertainty metrics, and their summary
    (module docstring); None when the model reports no uncertainty."""
    if not results or not all(np.isfinite(r.uncertainty).all() for r in results):
        return None
    per_condition: dict[str, dict] = {}
    pooled_u, pooled_o, pooled_risk = [], [], []
    for r in results:
        name = r.condition.name
        entry = {"model": uncertainty_metrics(r.uncertainty, r.output, r.labels, task)}
        pooled_u.append(np.asarray(r.uncertainty, dtype=np.float64))
        pooled_risk.append(per_sample_risk(r.output, r.labels, task))
        if oracle is not None:
            entry["oracle"] = uncertainty_metrics(oracle[name], r.output, r.labels, task)
            pooled_o.append(oracle[name])
        per_condition[name] = entry
    sources = ("model", "oracle") if oracle is not None else ("model",)
    summary: dict = {s: {n: float(np.mean([e[s][n] for e in per_condition.values()])) for n in SUMMARISED}
                     for s in sources}
    risk = np.concatenate(pooled_risk)
    summary["model"]["pooled_spearman"] = spearman(np.concatenate(pooled_u), risk)
    if oracle is not None:
        summary["oracle"]["pooled_spearman"] = spearman(np.concatenate(pooled_o), risk)
        summary["spearman_ratio_to_oracle"] = summary["model"]["spearman"] / summary["oracle"]["spearman"]
    frame = [r for r in results if r.condition.protocol == "frame"]
    summary["frame_trend"] = _rate_trend([r.condition.rate for r in frame],
                                         [per_condition[r.condition.name]["model"]["mean_uncertainty"]
                                          for r in frame])
    return {"conditions": per_condition, "summary": summary}
