"""casd: Confidence-Aware Self-Distillation for multimodal sentiment analysis with missing modalities.

Entry points: ``python -m casd`` (MMSA's command line: models x seeds -> CSV tables),
``python -m casd.train`` (one run), ``python -m casd.study`` (variants x seeds),
``python -m casd.predict`` (a checkpoint on new data). In Python, ``casd.load(path)`` gives a
trained model that predicts (casd/inference.py). Drop-in layers for other models:
``casd.layers`` (docs/layers.md); the fused operations: ``casd.kernels``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from casd._version import __version__

if TYPE_CHECKING:  # importing casd stays light: torch loads when a model does
    import torch

    from casd.inference import TrainedModel

__all__ = ["__version__", "load"]


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of a casd.train checkpoint, ready to predict: ``casd.load("runs/x/best.pt")``.

    ``.predict(data, condition)`` takes an MMSA feature pickle or one split's feature arrays and
    returns outputs, uncertainty and component weights (casd.inference.TrainedModel).
    """
    from casd.inference import load as load_trained

    return load_trained(path, device)
