"""Held-out calibration of the confidence (formulation §4, "Held-out calibration of u").

After training, refit what sets u on the validation split.

Why: training calibrates u_k (log b_k = u_k + c, the Laplace likelihood of §4) on the training
errors, and the network memorises its training labels. On complete inputs a trained model's
training MAE is about half its validation MAE, and what makes a training error large is no longer
the planted noise (the oracle ranks training errors at Spearman 0.09, validation errors at 0.19)
but how extreme the label is. The {t,a,v} component, which carries ~80 % of pi on complete inputs,
learns exactly that: its u even falls as the text gets noisier (Spearman -0.34 on validation,
docs/study.md). Errors the model makes on data it never fitted are the ones u must predict.

What: after training and model selection, ``model.uncertainty_parameters(fit)`` are refit by the
Laplace NLL of y under every available component's own prediction f(mu_k), each component's u to
its own error (uniform weights), on the validation split's complete view and a random student
view per batch (the training missingness), with every other weight frozen and the network in
eval mode (the errors are those prediction makes; nothing else learns the validation labels).
``fit="reliability"`` (the default) refits c and the input-reliability shift of log sigma
(casd.reliability: 43 weights on statistics of the inputs); ``fit="heads"`` (the
second round's) refits c and the log sigma and nu heads (a few thousand weights). Refitting u
moves pi = softmax(-u / tau), so predictions move too.

Why the shift: fit on one speaker-disjoint half of the validation split and scored on the other
(both ways), the shift (40 passes at lr 0.03) raised the test-weighted mean Spearman(ubar,
|error|) of four uncalibrated second-round runs from 0.09-0.14 to 0.21-0.23 and lowered their
held-out MAE by 0.002-0.016; the heads (40 passes at lr 3e-3) went to 0.16-0.18, with MAE lower
by 0.003-0.009 (formulation §8,
docs/notebook/issue11_round3). Model selection (the best epoch) happens before, on the
uncalibrated model, as always; the calibration's own validation NLL is in-sample and reported as
such.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from casd.data import Split, SplitDataset, TrainingMissingness, batch_to, make_loader
from casd.objective import component_losses, mixed, uniform_log_weights
from casd.vocab import CALIBRATION_FITS

__all__ = ["CalibrationConfig", "calibration_loss", "calibrate_uncertainty"]

log = logging.getLogger("casd")


@dataclass(frozen=True)
class CalibrationConfig:
    """How u is refit on the validation split after training (``epochs = 0``: not at all)."""

    fit: str = "reliability"  # casd.vocab.CALIBRATION_FITS: what is refit (module docstring)
    # Passes over the validation split. Fit on half of it, the shift's 43 weights (and c) ranked the
    # other half best after 40 passes at lr 0.03 (~120 steps; lr 0.01 was slower); 25 passes over
    # all 300 samples take about as many steps. ("heads" had 10 passes at lr 3e-3; 30-40 overfitted.)
    epochs: int = 25
    lr: float = 3e-2
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.fit not in CALIBRATION_FITS:
            raise ValueError(f"fit must be one of {CALIBRATION_FITS}, got {self.fit!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ValueError(f"lr must be finite and in (0, 1], got {self.lr}")


def calibration_loss(model: nn.Module, batch: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    """mean_b mean_{k available} [Laplace NLL of y_b under (f(mu_bk), b_bk)]: each u_k to its own error."""
    mixture = model(batch)
    with torch.no_grad():  # f is fixed: only the scale learns
        outputs = model.predictor(mixture.mu).unsqueeze(2)  # [B, K, 1, O]
    log_scale = model.error_log_scale_of(mixture)
    return mixed(component_losses(outputs, batch["labels"], task, log_scale), uniform_log_weights(mixture.log_pi)).mean()


@torch.no_grad()
def _mean_loss(model: nn.Module, data: SplitDataset, config: CalibrationConfig, task: str,
               device: torch.device) -> float:
    total = count = 0
    for batch in make_loader(data, config.batch_size, shuffle=False):
        batch = batch_to(batch, device)
        rows = batch["labels"].shape[0]
        total += float(calibration_loss(model, batch, task)) * rows
        count += rows
    return total / count


def calibrate_uncertainty(model: nn.Module, split: Split, missingness: TrainingMissingness,
                          config: CalibrationConfig, task: str, device: torch.device, seed: int) -> dict | None:
    """Refit ``model.uncertainty_parameters(config.fit)`` on ``split`` in place; None for a model
    without a Laplace scale to calibrate (``likelihood="point"``, late fusion).

    Returns what it did: what it fit, the epochs and the mean calibration loss on ``split``'s
    complete view before and after (in-sample: ``split`` is what it fitted).
    """
    parameters = getattr(model, "uncertainty_parameters", None)
    if config.epochs == 0 or parameters is None or getattr(model.config, "likelihood", "point") != "laplace":
        return None
    trainable = list(parameters(config.fit))
    learning = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    data = SplitDataset(split)
    generator = torch.Generator().manual_seed(seed)
    missing = torch.Generator(device=device).manual_seed(seed + 1)
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    try:
        model.eval()  # dropout off: the errors are those prediction makes
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        before = _mean_loss(model, data, config, task, device)
        for _ in range(config.epochs):
            for batch in make_loader(data, config.batch_size, shuffle=True, generator=generator):
                batch = batch_to(batch, device)
                loss = calibration_loss(model, batch, task) + calibration_loss(model, missingness.apply(batch, missing), task)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        after = _mean_loss(model, data, config, task, device)
    finally:
        for p, flag in learning.items():
            p.requires_grad_(flag)
        model.train(was_training)
    log.info("calibrated u on the validation split (%s): %d epochs, its Laplace NLL %.4f -> %.4f (in-sample)",
             config.fit, config.epochs, before, after)
    return {"fit": config.fit, "epochs": config.epochs, "lr": config.lr, "valid_nll_before": before,
            "valid_nll_after": after}
