"""The model kinds a run can train, and what evaluation needs from a model.

A kind is one ``ModelKind`` entry in ``MODEL_KINDS``: its network config and module, and the
objective that trains it. ``casd.train --model``, the checkpoint loader and the study's
variants all read this table, so a new model variant is one entry here (plus its module).

Every model evaluates through ``Predictor.predict``: a batch dict (casd.data.loader) ->
``Prediction`` (output, uncertainty ubar, component weights pi).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from casd.baseline import LateFusionConfig, LateFusionModel, LateFusionObjective
from casd.distributed import DistContext
from casd.errors import CheckpointError, ConfigError
from casd.model import CASDModel, ModelConfig, Prediction
from casd.objective import CASDObjective, ObjectiveConfig

__all__ = ["Predictor", "ModelKind", "MODEL_KINDS", "build_model", "build_objective", "model_config",
           "model_kind"]


@runtime_checkable
class Predictor(Protocol):
    """What evaluation and prediction use: a module whose ``predict`` maps a batch to a Prediction."""

    config: Any  # the network config the model was built from (rebuilds it from a checkpoint)
    training: bool

    def predict(self, batch: dict[str, torch.Tensor]) -> Prediction: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...


@dataclass(frozen=True)
class ModelKind:
    """One trainable model kind.

    ``config_class`` is the network config (a dataclass whose ``feature_dims`` and
    ``output_dim`` come from the data; its other fields are hyperparameters).
    ``objective_class(config: ObjectiveConfig, task, context: DistContext)`` trains it, called
    as ``objective(model, teacher, student, noise_seed)`` and returning a LossBreakdown.
    """

    name: str
    description: str
    config_class: type
    model_class: type[nn.Module]
    objective_class: type[nn.Module]


MODEL_KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("casd", "CASD: confidence-weighted Student-t mixture with consistency distillation",
              ModelConfig, CASDModel, CASDObjective),
    ModelKind("late_fusion", "late-fusion baseline (same encoders, modality dropout)",
              LateFusionConfig, LateFusionModel, LateFusionObjective),
)}


def _kind(name: str) -> ModelKind:
    if name not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {name!r}; choose one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def model_config(kind: str, feature_dims: tuple[int, ...], output_dim: int, **hyperparameters: Any):
    """The network config of ``kind`` for data with ``feature_dims`` and ``output_dim``.

    Hyperparameters the kind does not have are ignored (a late-fusion model has no embedding
    dimension), so one set of settings configures every kind.
    """
    config_class = _kind(kind).config_class
    names = {f.name for f in fields(config_class)}
    own = {k: v for k, v in hyperparameters.items() if k in names}
    return config_class(feature_dims=tuple(feature_dims), output_dim=output_dim, **own)


def build_model(kind: str, config: dict | Any) -> nn.Module:
    """A model of ``kind`` from its network config (a dataclass, or its dict as stored in checkpoints)."""
    entry = _kind(kind)
    if isinstance(config, entry.config_class):
        return entry.model_class(config)
    if is_dataclass(config):
        config = asdict(config)
    try:
        network_config = entry.config_class(**config)
    except TypeError as exc:  # a field this version does not know, or one missing
        raise CheckpointError(f"model config does not fit model kind {kind!r}: {exc}") from exc
    return entry.model_class(network_config)


def build_objective(kind: str, config: ObjectiveConfig, task: str = "regression",
                    context: DistContext = DistContext()) -> nn.Module:
    """The objective that trains a model of ``kind``."""
    return _kind(kind).objective_class(config, task, context)


def model_kind(model: nn.Module) -> str:
    """The registry name of ``model``'s class."""
    for kind in MODEL_KINDS.values():
        if type(model) is kind.model_class:
            return kind.name
    raise ConfigError(f"{type(model).__name__} is not one of the model kinds {sorted(MODEL_KINDS)}")
