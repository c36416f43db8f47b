"""kernels/runtime.py: where the Triton kernels run, and the errors when they cannot."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import casd.kernels
from casd.kernels import BackendUnavailableError, interpreter_enabled, ops, triton_available
from casd.kernels.runtime import triton_ops

LAUNCHERS = (
    "mixture_logpdf_forward",
    "mixture_logpdf_backward",
    "consistency_distillation_forward",
    "student_t_rsample_forward",
    "student_t_rsample_backward",
)


def test_the_kernel_module_exposes_the_launchers(device):
    assert triton_available()
    module = triton_ops(device)
    for name in LAUNCHERS:
        assert callable(getattr(module, name)), name
    assert triton_ops(device) is module  # imported once per process


def test_public_functions_stay_callable_after_the_kernels_are_imported(device):
    """Importing a submodule sets it as an attribute of its package: a kernel module named
    like a public function would replace ``casd.kernels.<function>`` once loaded."""
    triton_ops(device)  # the kernels are loaded now
    mu = torch.zeros(1, 2, 3, device=device)
    z = casd.kernels.student_t_rsample(mu, mu, torch.ones(1, 2, 4, device=device), 0, backend="triton")
    assert z.shape == (1, 2, 4, 3)
    for name in casd.kernels.__all__:
        value = getattr(casd.kernels, name)
        assert not isinstance(value, type(os)), f"casd.kernels.{name} is a module"


def test_launches_happen_on_the_tensors_device():
    """Triton launches on the current CUDA device; the guard makes it the tensors' own."""
    from casd.kernels.fused.launch import device_guard

    guard = device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(device_guard(torch.device("cpu")), torch.cuda.device)


def test_mode_follows_the_device(device):
    assert interpreter_enabled() == (device.type == "cpu")


def test_unsupported_device_type_is_refused():
    with pytest.raises(BackendUnavailableError, match="runs on CUDA or"):
        triton_ops(torch.device("meta"))


def test_the_other_device_type_is_refused_once_a_mode_is_loaded(device):
    triton_ops(device)
    other = torch.device("cpu") if device.type == "cuda" else torch.device("cuda")
    expected = "compiled for CUDA" if device.type == "cuda" else "loaded in interpreter mode"
    with pytest.raises(BackendUnavailableError, match=expected):
        triton_ops(other)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        ops.mixture_logpdf(*[torch.zeros(1, 1, 1)] * 3, torch.ones(1, 1), torch.zeros(1, 1), backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter fallback is for CPU-only machines")
def test_cpu_tensors_switch_a_fresh_process_to_the_interpreter_with_a_warning():
    """Without TRITON_INTERPRET, CPU tensors still run (interpreted) and say so once."""
    script = textwrap.dedent(
        """
        import warnings
        import torch
        from casd.kernels import ops
        gen = torch.Generator().manual_seed(0)
        z, mu = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 2, 4, generator=gen)
        log_sigma, nu = 0.1 * torch.randn(2, 2, 4, generator=gen), torch.full((2, 2), 4.0)
        log_pi = torch.log_softmax(torch.randn(2, 2, generator=gen), -1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fused = ops.mixture_logpdf(z, mu, log_sigma, nu, log_pi, backend="triton")
        reference = ops.mixture_logpdf(z, mu, log_sigma, nu, log_pi, backend="torch")
        torch.testing.assert_close(fused, reference)
        assert any("interpreter" in str(w.message) for w in caught), caught
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


_OPTIMIZER_FIRST = """
import torch
{first}
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports triton via torch._dynamo
from casd.kernels import StudentTMixture, BackendUnavailableError
mixture = StudentTMixture(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.full((1, 1), 5.0), torch.zeros(1, 1))
try:
    print(tuple(mixture.rsample(2, seed=0, backend="triton").shape))
except BackendUnavailableError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter fallback is for CPU-only machines")
@pytest.mark.parametrize(
    "first, expected",
    [("import casd.kernels", "(1, 1, 2, 4)"), ("import triton", "refused: triton was imported in compiled mode")],
)
def test_triton_imported_by_torch_before_the_first_kernel_call(first, expected):
    """Importing casd.kernels first picks the interpreter in time; importing triton first is
    refused with an explanation instead of an obscure interpreter error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _OPTIMIZER_FIRST.format(first=first)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(expected), result.stdout

