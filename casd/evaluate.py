"""Evaluation under the missing-modality protocols: predictions and metrics per condition."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from casd.data import EvalCondition, Split, apply_condition, batch_to, make_loader
from casd.distributed import DistContext
from casd.metrics import compute_metrics, sweep_summary
from casd.model import CASDModel

__all__ = ["ConditionResult", "predict_split", "evaluate_conditions", "summarise"]


@dataclass
class ConditionResult:
    condition: EvalCondition
    metrics: dict[str, float]
    output: np.ndarray  # [N] scores or [N, C] logits
    confidence: np.ndarray  # [N]
    weights: np.ndarray  # [N, K]
    labels: np.ndarray  # [N]


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def predict_split(
    model: CASDModel,
    split: Split,
    present: np.ndarray | None,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model.predict`` over a split in order; returns output, confidence, weights."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {"output": [], "confidence": [], "weights": []}
    try:
        for batch in make_loader(split, batch_size, shuffle=False, present=present):
            with autocast_context(device, amp_dtype):
                prediction = model.predict(batch_to(batch, device))
            chunks["output"].append(prediction.output.float().cpu().numpy())
            chunks["confidence"].append(prediction.confidence.float().cpu().numpy())
            chunks["weights"].append(prediction.weights.float().cpu().numpy())
    finally:
        model.train(was_training)
    return {key: np.concatenate(value) for key, value in chunks.items()}


def _predict_rows(model, split: Split, present: np.ndarray, rows: slice, device, batch_size, amp_dtype):
    if rows.stop == rows.start:  # more ranks than rows: an empty shard
        return {}
    return predict_split(model, split.subset(rows), present[rows], device, batch_size, amp_dtype)


def evaluate_conditions(
    model: CASDModel,
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
