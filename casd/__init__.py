"""casd: Confidence-Aware Self-Distillation for multimodal sentiment analysis with missing modalities.

Entry points: ``python -m casd.train`` (one run), ``python -m casd.study`` (variants x seeds),
``python -m casd.predict`` (a checkpoint on new data). Drop-in layers for other models:
``casd.layers``; the fused operations: ``casd.kernels``.
"""
from casd._version import __version__

__all__ = ["__version__"]
