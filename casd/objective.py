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
from casd.vocab import NOISE_STRATEGIES, TASKS

__all__ = ["ObjectiveConfig", "LossBreakdown", "MixtureModel", "CASDObjective", "check_task", "concat_views",
           "task_loss"]


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the objective trains: its terms, temperatures and sampling (formulation §3-4)."""

    num_samples: int = 4  # S reparameterised draws per component
    # Weight of the consistency-distillation term (0 switches it off). Chosen on the synthetic
    # data's validation split over 3 seeds from {0, 0.01, 0.03, 0.1} (docs/study.md).
    lambda_cd: float = 0.01
    # Confidence temperature tau: pi = softmax(-u / tau) (formulation §3; the model applies it,
    # built with this value) and the L_cd row weights w_b = B softmax_b(-ubar_b / tau) (§4).
    tau: float = 1.0
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
        if self.noise not in NOISE_STRATEGIES:
            raise ValueError(f"noise must be one of {NOISE_STRATEGIES}, got {self.noise!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


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


def task_loss(outputs: torch.Tensor, labels: torch.Tensor, log_pi: torch.Tensor, task: str) -> torch.Tensor:
    """mean_b sum_k pi_bk mean_q loss(f(z_bkq), y_b) for outputs [B, K, S, O] -> scalar."""
    batch, components, samples, _ = outputs.shape
    outputs = outputs.float()
    if task == "regression":
        per_sample = (outputs.squeeze(-1) - labels.float().view(batch, 1, 1)).abs()
    else:
        targets = labels.long().view(batch, 1, 1).expand(batch, components, samples)
        per_sample = nn.functional.cross_entropy(
            outputs.permute(0, 3, 1, 2), targets, reduction="none"
        )
    per_component = per_sample.mean(-1)  # [B, K]
    weighted = torch.where(torch.isfinite(log_pi), log_pi.exp() * per_component, 0.0)
    return weighted.sum(-1).mean()


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
        self.distill = distillation_loss(config.tau, config.backend, context)

    def noise_keys(self, teacher: dict[str, torch.Tensor], noise_seed: int | None) -> torch.Tensor | None:
        """The sampler's keys for the 2B rows (teacher view 0, student view 1), or None for "batch" noise."""
        if self.config.noise != "sample":
            return None
        if noise_seed is None:
            raise ValueError("noise='sample' keys the noise by (seed, view, sample index): pass noise_seed")
        index = teacher["index"]
        return torch.cat([row_keys(noise_seed, 0, index), row_keys(noise_seed, 1, index)])

    def forward(
        self, model: MixtureModel, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
        noise_seed: int | None = None,
    ) -> LossBreakdown:
        batch = teacher["labels"].shape[0]
        mixture = model(concat_views(teacher, student))
        samples = self.sampler(mixture, self.noise_keys(teacher, noise_seed))  # [2B, K, S, D]
        outputs = model.predictor(samples)  # [2B, K, S, O]
        labels, log_pi, task = teacher["labels"], mixture.log_pi, self.task
        task_teacher = task_loss(outputs[:batch], labels, log_pi[:batch], task)
        task_student = task_loss(outputs[batch:], labels, log_pi[batch:], task)
        if self.config.lambda_cd > 0:
            distillation = self.distill(mixture[:batch], mixture[batch:], samples[:batch])
        else:
            distillation = torch.zeros((), device=samples.device)
        total = task_teacher + task_student + self.config.lambda_cd * distillation
        return LossBreakdown(total, task_teacher, task_student, distillation)
