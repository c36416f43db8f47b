"""The words a run is configured with, each defined once.

Command-line ``choices``, config validation and the code that dispatches on a value all read
these tuples, so adding a value is one edit here plus the code that handles it. Vocabularies
owned by one module stay with it and are imported from there (docs/architecture.md lists
them all): the modalities and combinations (``casd.modalities``), the missingness protocols
(``casd.data.missing``), the kernel backends (``casd.kernels.BACKENDS``), the model kinds
(``casd.registry.MODEL_KINDS``) and the metric names (``casd.metrics``).

This module imports nothing from casd, so every layer may use it.
"""
from __future__ import annotations

__all__ = ["TASKS", "DATASETS", "SPLITS", "NOISE_STRATEGIES", "AMP_MODES", "WEIGHTINGS", "DISTRIBUTIONS"]

# What the labels are: a sentiment score (L1 loss, MMSA regression metrics) or class ids
# (cross-entropy, accuracy / F1; IEMOCAP-style `classification_labels`).
TASKS: tuple[str, ...] = ("regression", "classification")

# Data set kinds: they select the metric family (MOSI/MOSEI or SIMS; formulation §7).
DATASETS: tuple[str, ...] = ("mosi", "mosei", "sims")

# The splits of an MMSA feature pickle, in the order they are used.
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# How the sampler draws its reparameterisation noise (casd.sampler): "batch" takes one key per
# step (and rank) from torch's generator; "sample" keys every row's draws by (epoch seed, view,
# sample index), identical for any number of processes. Both draw inside the kernels (--fused).
NOISE_STRATEGIES: tuple[str, ...] = ("batch", "sample")

# Autocast modes (casd.device.resolve_amp): auto picks bf16 / fp16 on GPUs and off on the CPU.
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")

# Component weights of the CASD mixture: by confidence (formulation §3) or uniform (ablation).
WEIGHTINGS: tuple[str, ...] = ("confidence", "uniform")

# Component family: Student-t (formulation §2.3) or Gaussian (nu fixed very large; ablation).
DISTRIBUTIONS: tuple[str, ...] = ("student_t", "gaussian")
