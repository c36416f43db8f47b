"""The Triton kernels and their launchers, imported lazily by ``runtime.triton_ops`` in the right mode.

One module per operation (kernels, then launchers), plus the shared launch settings and
special functions. Launchers take validated, same-device tensors and return tensors; the
autograd wiring lives in ``casd.kernels.custom_ops``, which must not import Triton itself.

This is a subpackage so that no module here shares a name with a public function of
``casd.kernels`` (importing a submodule sets it as an attribute of its package, which
would replace ``casd.kernels.mixture_logpdf`` the function by the module).
"""
from .consistency_distillation import consistency_distillation_forward
from .gamma import keyed_standard_gamma_forward
from .launch import device_guard, tiles_or_default
from .mixture_logpdf import mixture_logpdf_backward, mixture_logpdf_forward
from .student_t_rsample import student_t_rsample_backward, student_t_rsample_forward

__all__ = [
    "consistency_distillation_forward",
    "device_guard",
    "keyed_standard_gamma_forward",
    "mixture_logpdf_backward",
    "mixture_logpdf_forward",
    "student_t_rsample_backward",
    "student_t_rsample_forward",
    "tiles_or_default",
]
