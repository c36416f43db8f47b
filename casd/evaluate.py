"""Evaluation under the missing-modality protocols: predictions and metrics per condition.

Test conditions are the 17 of casd.data.evaluation_conditions with the run's evaluation seed;
validation (model selection) uses its own seeds and a coarser frame sweep, never the test ones.
Every model is evaluated through its ``predict`` (casd.registry.Predictor).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from casd.data import EvalCondition, Split, apply_condition, batch_to, evaluation_conditions, make_loader
from casd.device import autocast_context
from casd.distributed import DistContext
from casd.errors import DivergenceError
from casd.metrics import compute_metrics, sweep_summary
from casd.registry import Predictor

__all__ = ["ConditionResult", "VALID_SEED_OFFSET", "VALID_RATES", "test_conditions", "validation_conditions",
           "selection_metric", "predict_split", "evaluate_conditions", "summarise"]

# Validation uses its own seeds (never the test ones) and a coarser sweep to stay cheap.
VALID_SEED_OFFSET = 100_000
VALID_RATES = (0.0, 0.3, 0.6, 0.9)


def test_conditions(seed: int) -> list[EvalCondition]:
    """The 17 recorded test conditions of evaluation seed ``seed``."""
    return evaluation_conditions(seed)


def validation_conditions(seed: int) -> list[EvalCondition]:
    """Model-selection conditions: frame rates VALID_RATES and the 7 combinations, on seeds of their own."""
    return [c for c in evaluation_conditions(seed + VALID_SEED_OFFSET)
            if c.protocol == "modality" or round(c.rate, 1) in VALID_RATES]


def selection_metric(task: str) -> str:
    """The validation metric that picks the best epoch."""
    return "F1_weighted" if task == "classification" else "MAE"


@dataclass
class ConditionResult:
    condition: EvalCondition
    metrics: dict[str, float]
    output: np.ndarray  # [N] scores or [N, C] logits
    uncertainty: np.ndarray  # [N] ubar: higher = less sure
    weights: np.ndarray  # [N, K]
    labels: np.ndarray  # [N]


@torch.no_grad()
def predict_split(
    model: Predictor,
    split: Split,
    present: np.ndarray | None,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model.predict`` over a split in order; returns output, uncertainty, weights."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {"output": [], "uncertainty": [], "weights": []}
    try:
        for batch in make_loader(split, batch_size, shuffle=False, present=present):
            with autocast_context(device, amp_dtype):
                prediction = model.predict(batch_to(batch, device))
            chunks["output"].append(prediction.output.float().cpu().numpy())
            chunks["uncertainty"].append(prediction.uncertainty.float().cpu().numpy())
            chunks["weights"].append(prediction.weights.float().cpu().numpy())
    finally:
        model.train(was_training)
    return {key: np.concatenate(value) for key, value in chunks.items()}


def _predict_rows(model, split: Split, present: np.ndarray, rows: slice, device, batch_size, amp_dtype):
    if rows.stop == rows.start:  # more ranks than rows: an empty shard
        return {}
    return predict_split(model, split.subset(rows), present[rows], device, batch_size, amp_dtype)


def evaluate_conditions(
    model: Predictor,
    split: Split,
    conditions: list[EvalCondition],
    dataset: str,
    task: str,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
    progress=None,
    context: DistContext = DistContext(),
) -> list[ConditionResult]:
    """Evaluate the model on ``split`` under each condition (fixed seeds: repeatable).

    Under several processes (``context``) each rank predicts its shard of rows and the
    predictions are gathered, so every rank returns the same, complete results.
    """
    results = []
    for condition in conditions:
        degraded, present = apply_condition(split, condition)  # whole split: masks as in 1 process
        if context.enabled:
            rows = context.shard(split.num_samples)
            shard = _predict_rows(model, degraded, present, rows, device, batch_size, amp_dtype)
            predicted = context.gather_arrays(shard)
        else:
            predicted = predict_split(model, degraded, present, device, batch_size, amp_dtype)
        bad = ~np.isfinite(predicted["output"]).reshape(len(predicted["output"]), -1).all(axis=1)
        if bad.any():  # finite weights can still overflow in the forward pass once training has diverged
            raise DivergenceError(
                f"the model's outputs under {condition.name} are not finite for {int(bad.sum())} of {len(bad)} "
                "samples: training diverged (resume it with a lower --lr, or train with --amp off)")
        metrics = compute_metrics(predicted["output"], split.labels, dataset, task)
        results.append(ConditionResult(condition, metrics, labels=split.labels, **predicted))
        if progress is not None:
            progress(condition, metrics)
    return results


def summarise(results: list[ConditionResult]) -> dict:
    """Group results by protocol: the frame-level sweep with its mean and AUC, and the
    modality combinations with their mean."""
    frame = [r for r in results if r.condition.protocol == "frame"]
    modality = [r for r in results if r.condition.protocol == "modality"]
    summary: dict = {}
    if frame:
        rates = [r.condition.rate for r in frame]
        names = list(frame[0].metrics)
        summary["frame"] = {
            "rates": rates,
            "seeds": [r.condition.seed for r in frame],
            "metrics": {name: [r.metrics[name] for r in frame] for name in names},
            "summary": {name: sweep_summary(rates, [r.metrics[name] for r in frame]) for name in names},
        }
    if modality:
        names = list(modality[0].metrics)
        summary["modality"] = {
            "combinations": {r.condition.combination: r.metrics for r in modality},
            "mean": {name: float(np.mean([r.metrics[name] for r in modality])) for name in names},
        }
    return summary
