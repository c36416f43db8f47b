"""casd.kernels: the three fused CASD operations and the Student-t mixture math.

Installed as ``casd.kernels`` (the source folder is ``kernels/`` at the repository root).
Depends only on torch and triton; nothing here imports the model.
"""
from . import custom_ops  # noqa: F401  (registers torch.ops.casd.*)
from .distribution import StudentTMixture
from .host_math import (
    check_some_component_available,
    confidence_log_weights,
    entropy,
    gamma_scales,
    log_normaliser,
    mixture_uncertainty,
    row_weights,
    scales_from_gamma,
    uncertainty,
)
from .ops import (
    BACKENDS,
    consistency_distillation,
    keyed_gamma_scales,
    mixture_logpdf,
    student_t_rsample,
    student_t_rsample_with_noise,
)
from .philox import random_key
from .reference import (
    Mixture,
    consistency_distillation_reference,
    mixture_logpdf_reference,
    student_t_rsample_reference,
)
from .runtime import BackendUnavailableError, interpreter_enabled, triton_available

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "Mixture",
    "StudentTMixture",
    "check_some_component_available",
    "confidence_log_weights",
    "consistency_distillation",
    "consistency_distillation_reference",
    "entropy",
    "gamma_scales",
    "interpreter_enabled",
    "keyed_gamma_scales",
    "log_normaliser",
    "mixture_logpdf",
    "mixture_logpdf_reference",
    "mixture_uncertainty",
    "random_key",
    "row_weights",
    "scales_from_gamma",
    "student_t_rsample",
    "student_t_rsample_reference",
    "student_t_rsample_with_noise",
    "triton_available",
    "uncertainty",
]
