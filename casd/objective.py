"""The CASD training objective (formulation §4): teacher and student views as one 2B batch.

    L = L_task(teacher) + L_task(student) + lambda_cd * L_cd

The objective owns its randomness: ``ObjectiveConfig`` holds the noise strategy, the backend
and the temperature, and ``CASDObjective`` builds its sampler (casd.sampler) and its L_cd
(casd.distillation) from it.

``CASDObjective`` trains any model that satisfies :class:`MixtureModel`, not only casd's own
network: a model built on casd.layers (examples/late_fusion_lstm.py, examples/mmsa_casd_head.py)
gets CASD's self-distillation from the same code, and the same numbers.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from casd.distillation import distillation_loss
from casd.distributed import DistContext
from casd.kernels import BACKENDS, StudentTMixture
from casd.sampler import Sampler, row_keys
from casd.vocab import DISTILL_MODES, NOISE_STRATEGIES, TASK_INPUTS, TASK_WEIGHTS, TASKS

__all__ = ["ObjectiveConfig", "FIRST_FORMULATION", "LossBreakdown", "MixtureModel", "CASDObjective", "check_task", "concat_views",
           "component_losses", "mixed", "task_loss", "uniform_log_weights"]


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the objective trains: its terms, temperatures and sampling (formulation §3-4).

    The defaults are the issue-11 design chosen on the synthetic validation split (formulation
    §8); the first formulation is ``FIRST_FORMULATION`` (with the model's likelihood "point").
    """

    num_samples: int = 4  # S reparameterised draws per component
    # Weight of the consistency-distillation term (0 switches it off). With the per-component,
    # per-dimension L_cd, 0.3 beat 1.0 on the validation MAE (formulation §8).
    lambda_cd: float = 0.3
    # Temperature of the confidence weights pi = softmax(-u / tau) (formulation §3; the model
    # applies it, built with this value). 0.2 beat 1.0, 0.1 and 0.05 on validation (§8).
    tau: float = 0.2
    # Temperature of the L_cd row weights w_b = B softmax_b(-ubar_b / tau_rows) (§4). Kept apart
    # from tau: one tau doing both jobs collapsed training at tau <= 0.05 (formulation §8).
    tau_rows: float = 1.0
    distill: str = "component"  # casd.vocab.DISTILL_MODES (formulation §4)
    cd_per_dim: bool = True  # L_cd in nats per embedding dimension (divided by D)
    # Fraction of training over which lambda_cd ramps up linearly from 0 (0: none; a 0.3 warm-up
    # made no measurable difference on validation, §8).
    lambda_warmup: float = 0.0
    # What the task loss applies the predictor to (casd.vocab.TASK_INPUTS): "mean" scores f(mu_k),
    # what is predicted (§4); the samples then feed L_cd only.
    task_input: str = "mean"
    # How the task loss weighs the components (casd.vocab.TASK_WEIGHTS): "uniform" = every
    # available component equally, so each component's f and u learn on every sample that has it
    # and pi (from the calibrated u) only mixes; "confidence" = pi (until issue 11's second round),
    # which left the unimodal components under-trained: validation modality-mean MAE 0.737 /
    # 0.739 / 0.737 / 0.708 against 0.747 / 0.750 / 0.754 / 0.734 (formulation §8).
    task_weights: str = "uniform"
    # Where the sampling noise comes from (casd.sampler): "batch" draws one 64-bit key per step
    # (per rank under torchrun) on the device from the run's seeded generator. "sample" keys each
    # sample's draws by (epoch seed, view, sample index): results then do not depend on the
    # number of processes. Either way the whole batch is drawn at once (--fused: inside the
    # kernels, eps never stored).
    noise: str = "batch"
    backend: str = "torch"  # "triton" runs the sampler and L_cd through the fused kernels

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not (math.isfinite(self.lambda_cd) and self.lambda_cd >= 0):
            raise ValueError(f"lambda_cd must be finite and >= 0, got {self.lambda_cd}")
        if not (math.isfinite(self.tau) and self.tau > 0):  # tau = inf would make every weight uniform silently
            raise ValueError(f"tau must be finite and > 0, got {self.tau}")
        if not (math.isfinite(self.tau_rows) and self.tau_rows > 0):
            raise ValueError(f"tau_rows must be finite and > 0, got {self.tau_rows}")
        if self.distill not in DISTILL_MODES:
            raise ValueError(f"distill must be one of {DISTILL_MODES}, got {self.distill!r}")
        if self.task_weights not in TASK_WEIGHTS:
            raise ValueError(f"task_weights must be one of {TASK_WEIGHTS}, got {self.task_weights!r}")
        if self.task_input not in TASK_INPUTS:
            raise ValueError(f"task_input must be one of {TASK_INPUTS}, got {self.task_input!r}")
        if not (math.isfinite(self.lambda_warmup) and 0.0 <= self.lambda_warmup <= 1.0):
            raise ValueError(f"lambda_warmup must lie in [0, 1], got {self.lambda_warmup}")
        if self.noise not in NOISE_STRATEGIES:
            raise ValueError(f"noise must be one of {NOISE_STRATEGIES}, got {self.noise!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


# The objective of the first formulation (formulation §8 says what changed and why): one tau = 1
# for pi and the rows, the mixture KL in nats, the task loss on samples, lambda_cd 0.01.
FIRST_FORMULATION = {"lambda_cd": 0.01, "tau": 1.0, "tau_rows": 1.0, "distill": "mixture", "cd_per_dim": False,
                     "task_input": "samples", "lambda_warmup": 0.0, "task_weights": "confidence"}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


@dataclass
class LossBreakdown:
    total: torch.Tensor
    task_teacher: torch.Tensor
    task_student: torch.Tensor
    distillation: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {name: float(value.detach()) for name, value in vars(self).items()}


def concat_views(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack the two views of a batch along the batch dimension (teacher rows first)."""
    if teacher.keys() != student.keys():
        raise ValueError(f"views differ in keys: {sorted(teacher)} vs {sorted(student)}")
    return {key: torch.cat([teacher[key], student[key]]) for key in teacher}


def component_losses(outputs: torch.Tensor, labels: torch.Tensor, task: str,
                     log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """mean_q loss(f(z_bkq), y_b) per row and component: outputs [B, K, S, O] -> [B, K] (formulation §4).

    With ``log_scale`` = log b [B, K] (likelihood "laplace") the per-point loss is a proper
    scoring rule that calibrates b: for regression the Laplace negative log-likelihood
    |y - f| / b + log b (+ log 2, dropped). Its minimiser over b is E|y - f|, the component's
    expected absolute error, so b (hence u, log b = u + c) is pulled to the error it will make;
    over f it is the conditional median, as for the plain L1 loss, which it equals (up to the
    constant) at b = 1. For classes the logits are tempered, cross-entropy(f / b, y): a larger b
    spreads the predicted class distribution, and b is calibrated by the same likelihood.
    """
    batch, components, samples, _ = outputs.shape
    outputs = outputs.float()
    scale = None if log_scale is None else log_scale.float().exp().unsqueeze(-1)  # [B, K, 1]
    if task == "regression":
        per_sample = (outputs.squeeze(-1) - labels.float().view(batch, 1, 1)).abs()
        if scale is not None:
            per_sample = per_sample / scale + log_scale.float().unsqueeze(-1)
    else:
        if scale is not None:
            outputs = outputs / scale.unsqueeze(-1)
        targets = labels.long().view(batch, 1, 1).expand(batch, components, samples)
        per_sample = nn.functional.cross_entropy(
            outputs.permute(0, 3, 1, 2), targets, reduction="none"
        )
    return per_sample.mean(-1)


def mixed(per_component: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """sum_k pi_bk loss_bk: [B, K] -> [B]; absent components (log pi = -inf) count zero."""
    return torch.where(torch.isfinite(log_pi), log_pi.exp() * per_component, 0.0).sum(-1)


def uniform_log_weights(log_pi: torch.Tensor) -> torch.Tensor:
    """log of 1/K_b on the available components (log pi finite), -inf on the others: [B, K]."""
    available = torch.isfinite(log_pi)
    return torch.where(available, -torch.log(available.sum(-1, keepdim=True).float()), float("-inf"))


def task_loss(outputs: torch.Tensor, labels: torch.Tensor, log_pi: torch.Tensor, task: str,
              log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """mean_b sum_k pi_bk mean_q loss(f(z_bkq), y_b) for outputs [B, K, S, O] -> scalar (formulation §4);
    the per-point loss is ``component_losses``'s."""
    return mixed(component_losses(outputs, labels, task, log_scale), log_pi).mean()


@runtime_checkable
class MixtureModel(Protocol):
    """What CASDObjective needs from a model (casd.model.CASDModel is one; docs/layers.md).

    - ``model(batch)`` -> ``StudentTMixture`` over the K = 7 modality combinations: mu and
      log_sigma [B, K, D], nu [B, K], log_pi [B, K] with -inf for absent combinations (the
      output of casd.layers.ConfidenceMixture, formulation §2-3). ``batch`` is a dict of
      tensors with a leading batch dimension; the objective reads ``labels`` [B] and, for
      ``noise="sample"``, ``index`` [B] (casd.data.make_loader provides both), and stacks the
      teacher and student views of every key along dimension 0 before calling the model.
    - ``model.predictor(z)``: the task head, z [..., D] -> [..., O] (O = 1 for regression,
      the number of classes for classification), applied to the samples [2B, K, S, D].
    """

    predictor: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, batch: dict[str, torch.Tensor]) -> StudentTMixture: ...


class CASDObjective(nn.Module):
    """L_task(teacher) + L_task(student) + lambda_cd * L_cd, with the sampler and L_cd it builds,
    for any :class:`MixtureModel`.

    ``noise_seed`` (forward) keys the sampling noise when ``config.noise == "sample"``: row b
    of view v draws from ``row_keys(noise_seed, v, index_b)`` (casd.sampler), ``index`` being
    the batch's sample indices. The trainer passes its epoch seed; with ``"batch"`` noise the
    seed is not used (the draws come from torch's default generator).
    """

    def __init__(self, config: ObjectiveConfig, task: str = "regression", context: DistContext = DistContext()):
        super().__init__()
        self.config = config
        self.task = check_task(task)
        self.sampler = Sampler(config.num_samples, config.backend, config.noise)
        self.distill = distillation_loss(config.tau_rows, config.backend, context, config.distill,
                                         config.cd_per_dim)
        self.progress = 1.0  # fraction of training done; the trainer sets it each step (lambda warm-up)

    def set_progress(self, fraction: float) -> None:
        self.progress = float(fraction)

    def lambda_cd(self) -> float:
        """lambda_cd, ramped linearly from 0 over the first ``lambda_warmup`` of training (formulation §4)."""
        warmup = self.config.lambda_warmup
        return self.config.lambda_cd * (min(1.0, self.progress / warmup) if warmup > 0 else 1.0)

    def noise_keys(self, teacher: dict[str, torch.Tensor], noise_seed: int | None) -> torch.Tensor | None:
        """The sampler's keys for the 2B rows (teacher view 0, student view 1), or None for "batch" noise."""
        if self.config.noise != "sample":
            return None
        if noise_seed is None:
            raise ValueError("noise='sample' keys the noise by (seed, view, sample index): pass noise_seed")
        index = teacher["index"]
        return torch.cat([row_keys(noise_seed, 0, index), row_keys(noise_seed, 1, index)])

    @staticmethod
    def error_log_scale(model: MixtureModel, mixture: StudentTMixture) -> torch.Tensor | None:
        """log b [2B, K] of the Laplace likelihood for a model built with it (casd.model), else None."""
        if getattr(getattr(model, "config", None), "likelihood", "point") != "laplace":
            return None
        return model.error_log_scale_of(mixture)

    def forward(
        self, model: MixtureModel, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
        noise_seed: int | None = None,
    ) -> LossBreakdown:
        batch = teacher["labels"].shape[0]
        mixture = model(concat_views(teacher, student))
        distilling = self.config.lambda_cd > 0
        samples = None
        if self.config.task_input == "samples" or distilling:
            keys = self.noise_keys(teacher, noise_seed)
            if self.config.task_input == "samples":
                samples = self.sampler(mixture, keys)  # [2B, K, S, D]
            else:  # only L_cd needs draws, and only the teacher's
                samples = self.sampler(mixture[:batch], None if keys is None else keys[:batch])
        if self.config.task_input == "samples":
            outputs = model.predictor(samples)  # [2B, K, S, O]
        else:  # f(mu_k), what prediction uses (formulation §4)
            outputs = model.predictor(mixture.mu).unsqueeze(2)  # [2B, K, 1, O]
        labels, log_pi, task = teacher["labels"], mixture.log_pi, self.task
        if self.config.task_weights == "uniform":
            log_pi = uniform_log_weights(log_pi)
        log_scale = self.error_log_scale(model, mixture)
        scales = (None, None) if log_scale is None else (log_scale[:batch], log_scale[batch:])
        task_teacher = task_loss(outputs[:batch], labels, log_pi[:batch], task, scales[0])
        task_student = task_loss(outputs[batch:], labels, log_pi[batch:], task, scales[1])
        if distilling:
            distillation = self.distill(mixture[:batch], mixture[batch:], samples[:batch])
        else:
            distillation = torch.zeros((), device=mixture.mu.device)
        total = task_teacher + task_student + self.lambda_cd() * distillation
        return LossBreakdown(total, task_teacher, task_student, distillation)
