"""The Triton launchers, imported lazily by ``runtime.triton_ops`` in the right mode."""
from .consistency_distillation import consistency_distillation_triton
from .mixture_logpdf import mixture_logpdf_triton
from .student_t_rsample import student_t_rsample_triton, student_t_rsample_with_noise_triton

__all__ = [
    "consistency_distillation_triton",
    "mixture_logpdf_triton",
    "student_t_rsample_triton",
    "student_t_rsample_with_noise_triton",
]
