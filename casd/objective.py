"""The CASD training objective (formulation §4): teacher and student views as one 2B batch.

    L = L_task(teacher) + L_task(student) + lambda_cd * L_cd
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from casd.kernels import BACKENDS
from casd.layers import ConsistencyDistillationLoss, StudentTSampler
from casd.model import CASDModel

__all__ = ["ObjectiveConfig", "LossBreakdown", "CASDObjective", "concat_views", "task_loss"]


@dataclass
class ObjectiveConfig:
    num_samples: int = 4  # S reparameterised draws per component
    # Weight of the consistency-distillation term (0 switches it off). Chosen on the synthetic
    # data's validation split over 3 seeds from {0, 0.01, 0.03, 0.1} (docs/study.md).
    lambda_cd: float = 0.01
    task: str = "regression"  # or "classification"
    backend: str = "torch"  # "triton" runs the sampler and L_cd through the fused kernels

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {self.task!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.lambda_cd < 0:
            raise ValueError(f"lambda_cd must be >= 0, got {self.lambda_cd}")


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


class CASDObjective(nn.Module):
    def __init__(self, config: ObjectiveConfig, tau: float = 1.0):
        super().__init__()
        self.config = config
        self.sampler = StudentTSampler(config.num_samples, config.backend)
        self.distill = ConsistencyDistillationLoss(tau, config.backend)

    def forward(
        self, model: CASDModel, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]
    ) -> LossBreakdown:
        batch = teacher["labels"].shape[0]
        mixture = model(concat_views(teacher, student))
        samples = self.sampler(mixture)  # [2B, K, S, D]
        outputs = model.predictor(samples)  # [2B, K, S, O]
        labels, log_pi, task = teacher["labels"], mixture.log_pi, self.config.task
        task_teacher = task_loss(outputs[:batch], labels, log_pi[:batch], task)
        task_student = task_loss(outputs[batch:], labels, log_pi[batch:], task)
        if self.config.lambda_cd > 0:
            distillation = self.distill(mixture[:batch], mixture[batch:], samples[:batch])
        else:
            distillation = torch.zeros((), device=samples.device)
        total = task_teacher + task_student + self.config.lambda_cd * distillation
        return LossBreakdown(total, task_teacher, task_student, distillation)
