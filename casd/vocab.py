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

__all__ = ["TASKS", "DATASETS", "SPLITS", "NOISE_STRATEGIES", "AMP_MODES", "WEIGHTINGS", "DISTRIBUTIONS",
           "AVAILABILITIES", "LIKELIHOODS", "DISTILL_MODES", "TASK_INPUTS", "TASK_WEIGHTS", "ENCODERS",
           "CALIBRATION_FITS"]

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

# Which components a sample has (formulation §2.2): "mask" = only those whose modalities are all
# present (the hard availability mask); "inputs" = all 7, computed from what the inputs hold
# (an absent modality is zero-filled, as in MMSA's data).
AVAILABILITIES: tuple[str, ...] = ("mask", "inputs")

# What the task loss scores (formulation §4): "point" = L1 / cross-entropy of f(.); "laplace" =
# the negative log-likelihood of y under Laplace(f(.), b_k), log b_k = u_k + c (calibrates u).
LIKELIHOODS: tuple[str, ...] = ("point", "laplace")

# L_cd (formulation §4): "mixture" = KL between the teacher's and the student's mixtures (first
# formulation); "component" = mean over components of KL(teacher_k || student_k).
DISTILL_MODES: tuple[str, ...] = ("mixture", "component")

# What the task loss applies f to (formulation §4): "samples" z_kq (first formulation) or "mean"
# mu_k, which is what prediction uses.
TASK_INPUTS: tuple[str, ...] = ("samples", "mean")

# How the task loss weighs the components (formulation §4): by the confidence weights pi, or
# uniformly over the available ones (each component learns on every sample that has it).
TASK_WEIGHTS: tuple[str, ...] = ("confidence", "uniform")

# Per-modality encoders (casd.encoders): "transformer" = per-frame LayerNorm, projection, masked
# Transformer, mean pool; "linear" = a linear readout of the mean raw frame (and mean log frame
# scale), for the easy-encoder synthetic variant of the study (docs/study.md).
ENCODERS: tuple[str, ...] = ("transformer", "linear")

# What the held-out calibration refits (casd.calibration, formulation §4): "reliability" = the
# input-reliability shift of log sigma and c (casd.reliability), "heads" = the log sigma and nu
# heads and c (issue 11's second round).
CALIBRATION_FITS: tuple[str, ...] = ("reliability", "heads")
