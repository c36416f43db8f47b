"""The late-fusion baseline, trained and evaluated by the same protocol as CASD.

Deterministic decision-level fusion: the same per-modality encoders as CASD
(``casd.encoders.ModalityEncoder``), one prediction head per modality, and a learned global
weight per modality; a sample's prediction is the weighted mean of the heads of its present
modalities:

    y_hat = sum_{m present} softmax_{m present}(a)_m f_m(h_m)

It is trained like CASD, with a teacher view (complete inputs) and a student view with the
training missingness (modality dropout and frame dropout) as one 2B batch. Each view's task
loss is that of the fused output plus the mean loss of the heads of the present modalities
(``casd.objective.task_loss``; the heads as components with uniform weights):

    L_task(view) = mean_b loss(y_hat_b, y_b) + mean_b mean_{m present} loss(f_m(h_m), y_b)
    L = L_task(teacher) + L_task(student)

The second term trains every head to predict on its own, as a unimodal model would: with the
fused loss alone a head learns only through its share of the fusion, and a sample with one
present modality is then predicted by a head that was never asked to stand alone (issue 11
measured {t} MAE 0.97 against 0.73 for CASD). The differences from CASD are the fusion (fixed
weights instead of per-sample confidence) and the absence of distributions and distillation. It reports no uncertainty
(NaN) and, as its component weights, a one-hot vector on the combination of present
modalities (the only "component" it uses).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from casd.encoders import ModalityEncoders
from casd.modalities import MODALITIES, combination_membership, component_availability
from casd.distributed import DistContext
from casd.model import EncoderConfig, Prediction
from casd.objective import LossBreakdown, ObjectiveConfig, check_task, concat_views, task_loss

__all__ = ["LateFusionConfig", "LateFusionModel", "LateFusionObjective"]


@dataclass
class LateFusionConfig(EncoderConfig):
    """The baseline has nothing beyond the shared encoder settings."""


class LateFusionModel(nn.Module):
    def __init__(self, config: LateFusionConfig):
        super().__init__()
        self.config = config
        self.encoders = ModalityEncoders(
            config.feature_dims, config.hidden, config.encoder_layers, config.heads, config.dropout,
            config.frame_scale, config.encoder,
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                          nn.Linear(config.hidden, config.output_dim))
            for _ in MODALITIES
        )
        self.fusion_logits = nn.Parameter(torch.zeros(len(MODALITIES)))

    def modality_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 3, O]: each modality's own prediction (computed for absent ones too, then masked)."""
        vectors = self.encoders(batch)  # [B, 3, H]
        return torch.stack([head(vectors[:, m]) for m, head in enumerate(self.heads)], dim=1)

    def fusion_weights(self, present: torch.Tensor) -> torch.Tensor:
        """[B, 3]: softmax of the learned logits over each sample's present modalities."""
        present = present.bool()
        if not present.any(dim=1).all():
            raise ValueError("every sample needs at least one present modality")
        logits = self.fusion_logits.float().expand(present.shape[0], -1)
        return torch.softmax(logits.masked_fill(~present, float("-inf")), dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, O] fused scores or logits."""
        return self.fuse(batch["present"], self.modality_outputs(batch))

    def fuse(self, present: torch.Tensor, per_modality: torch.Tensor) -> torch.Tensor:
        """[B, O]: the present modalities' head outputs [B, 3, O] mixed by the fusion weights."""
        return (self.fusion_weights(present).unsqueeze(-1) * per_modality.float()).sum(1)

    def predict(self, batch: dict[str, torch.Tensor]) -> Prediction:
        output = self(batch)
        if self.config.output_dim == 1:
            output = output.squeeze(-1)
        available = component_availability(batch["present"])  # [B, K]
        size = combination_membership(available.device).sum(1)  # [K]
        used = torch.argmax(available.float() * size, dim=1)  # the combination of all present ones
        weights = nn.functional.one_hot(used, available.shape[1]).float()
        uncertainty = torch.full(output.shape[:1], float("nan"), device=output.device)
        return Prediction(output, uncertainty, weights)


class LateFusionObjective(nn.Module):
    """L_task(teacher) + L_task(student) on the fused output, both views in one 2B batch.

    It takes the arguments every objective takes (casd.registry builds them alike), but
    nothing here samples or distils: ``config`` and ``context`` are not used.
    """

    def __init__(self, config: ObjectiveConfig = ObjectiveConfig(), task: str = "regression",
                 context: DistContext = DistContext()):
        super().__init__()
        self.config = config
        self.task = check_task(task)

    def forward(self, model: LateFusionModel, teacher: dict[str, torch.Tensor],
                student: dict[str, torch.Tensor], noise_seed: int | None = None) -> LossBreakdown:
        batch = teacher["labels"].shape[0]
        views = concat_views(teacher, student)
        heads = model.modality_outputs(views)  # [2B, 3, O]
        fused = model.fuse(views["present"], heads)[:, None, None, :]  # [2B, K=1, S=1, O]
        one = fused.new_zeros(fused.shape[0], 1)  # one component, weight 1
        present = views["present"].bool()
        uniform = torch.log(present.float() / present.sum(1, keepdim=True))  # -inf for absent heads
        labels, task = teacher["labels"], self.task

        def view_loss(rows: slice) -> torch.Tensor:
            return (task_loss(fused[rows], labels, one[rows], task)
                    + task_loss(heads[rows].unsqueeze(2), labels, uniform[rows], task))

        task_teacher, task_student = view_loss(slice(0, batch)), view_loss(slice(batch, None))
        zero = torch.zeros((), device=fused.device)
        return LossBreakdown(task_teacher + task_student, task_teacher, task_student, zero)

