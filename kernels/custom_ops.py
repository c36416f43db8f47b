"""The fused operations as PyTorch custom ops: ``torch.ops.casd.*``, with fake kernels and autograd.

Registering them with ``torch.library.custom_op`` is what lets the fused path live inside
``torch.compile(fullgraph=True)`` and CUDA graphs: Dynamo and AOTAutograd treat each op as
one opaque node, trace it with the fake (shape-only) implementation below, and call the
registered backward. Each op launches its Triton kernel(s) and nothing else; nothing in
here reads tensor data on the host.

Why ``custom_op`` and not ``triton_op`` + ``wrap_triton``: ``triton_op`` lets Inductor see
the kernel launch and generate its own call, but that path exists only for CUDA code
generation, while these kernels must also run (and be compiled around, in CI) on the CPU
through Triton's interpreter. An opaque custom op works the same on the CPU and the GPU,
under ``aot_eager`` and ``inductor``, on torch 2.11 and 2.13 (both have every API used
here). Inductor cannot fuse into an opaque op, but there is nothing left to fuse: each op
is already one kernel each way.

The implementations import the kernels lazily through ``runtime.triton_ops`` (this module
must not import Triton: the interpreter is chosen on first use), launch on the tensors'
own device, and expect inputs that ``ops`` validated. Tile overrides travel as two ints
(0, 0 = the device's default tiles; tests force several tiles).

Ops (schemas as ``torch.library`` infers them from the annotations):

    casd::mixture_logpdf(z, mu, log_sigma, nu, log_pi, point_tile, pack_tile) -> log_p [B, P]
    casd::mixture_logpdf_backward(grad, log_p, z, mu, log_sigma, nu, log_pi, needs_grad_z, ...)
        -> (grad_z or [0], grad_mu, grad_log_sigma, grad_nu, grad_log_pi)
    casd::consistency_distillation(z, teacher x4, student x4, omega, row_weights, compute_grads, ...)
        -> (per_row [B], row_grads [B, K, packed_width(D)] or [0])
    casd::student_t_rsample(mu, log_sigma, scales, key, eps?, point_tile, pack_tile) -> z [B, K, S, D]
    casd::student_t_rsample_backward(grad_z, log_sigma, scales, key, eps?, mu_dtype, ...)
        -> (grad_mu, grad_log_sigma, grad_scales)
    casd::keyed_standard_gamma(nu, key, samples) -> X ~ Gamma(nu / 2, 1) [B, K, S]
        (no autograd: ``ops.keyed_gamma_scales`` adds the reparameterisation gradient)
"""
from __future__ import annotations

import torch

from . import runtime
from .packing import packed_width, unpack_gradients

__all__ = ["mixture_logpdf", "consistency_distillation", "student_t_rsample", "keyed_standard_gamma"]


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (tests, gradient checks), else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _fused(device: torch.device):
    return runtime.triton_ops(device)


# qualified name -> the Python implementation behind the op (what ``op_count`` looks into)
IMPLEMENTATIONS: dict = {}


def _register(name: str, implementation):
    IMPLEMENTATIONS[f"casd::{name}"] = implementation
    return torch.library.custom_op(f"casd::{name}", mutates_args=(), device_types=("cpu", "cuda"))(implementation)


# ----------------------------------------------------------------------------------------
# mixture_logpdf
# ----------------------------------------------------------------------------------------


def _mixture_logpdf_impl(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    nu: torch.Tensor,
    log_pi: torch.Tensor,
    point_tile: int,
    pack_tile: int,
) -> torch.Tensor:
    fused = _fused(z.device)
    with fused.device_guard(z.device):
        return fused.mixture_logpdf_forward(
            z, mu, log_sigma, nu, log_pi, fused.tiles_or_default(point_tile, pack_tile)
        )


mixture_logpdf = _register("mixture_logpdf", _mixture_logpdf_impl)


@mixture_logpdf.register_fake
def _(z, mu, log_sigma, nu, log_pi, point_tile, pack_tile):
    return z.new_empty(z.shape[:2], dtype=_compute_dtype(z, mu, log_sigma, nu, log_pi))


def _mixture_logpdf_backward_impl(
    grad_log_p: torch.Tensor,
    log_p: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    nu: torch.Tensor,
    log_pi: torch.Tensor,
    needs_grad_z: bool,
    point_tile: int,
    pack_tile: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    fused = _fused(z.device)
    with fused.device_guard(z.device):
        grad_z, *grads = fused.mixture_logpdf_backward(
            grad_log_p, log_p, z, mu, log_sigma, nu, log_pi,
            needs_grad_z=needs_grad_z, tiles=fused.tiles_or_default(point_tile, pack_tile),
        )
    return (grad_z if needs_grad_z else z.new_empty(0), *grads)


mixture_logpdf_backward = _register("mixture_logpdf_backward", _mixture_logpdf_backward_impl)


@mixture_logpdf_backward.register_fake
def _(grad_log_p, log_p, z, mu, log_sigma, nu, log_pi, needs_grad_z, point_tile, pack_tile):
    grad_z = torch.empty_like(z) if needs_grad_z else z.new_empty(0)
    return (grad_z, *(torch.empty_like(t) for t in (mu, log_sigma, nu, log_pi)))


def _mixture_setup(ctx, inputs, output):
    z, mu, log_sigma, nu, log_pi, point_tile, pack_tile = inputs
    ctx.save_for_backward(z, mu, log_sigma, nu, log_pi, output)
    ctx.tiles = (point_tile, pack_tile)


def _mixture_backward(ctx, grad_log_p):
    z, mu, log_sigma, nu, log_pi, log_p = ctx.saved_tensors
    grad_z, *grads = torch.ops.casd.mixture_logpdf_backward(
        grad_log_p, log_p, z, mu, log_sigma, nu, log_pi, ctx.needs_input_grad[0], *ctx.tiles
    )
    grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:5])]
    return (grad_z if ctx.needs_input_grad[0] else None, *grads, None, None)


mixture_logpdf.register_autograd(_mixture_backward, setup_context=_mixture_setup)


# ----------------------------------------------------------------------------------------
# consistency_distillation: the forward also returns the per-row gradients
# ----------------------------------------------------------------------------------------


def _consistency_distillation_impl(
    z: torch.Tensor,
    teacher_mu: torch.Tensor,
    teacher_log_sigma: torch.Tensor,
    teacher_nu: torch.Tensor,
    teacher_log_pi: torch.Tensor,
    student_mu: torch.Tensor,
    student_log_sigma: torch.Tensor,
    student_nu: torch.Tensor,
    student_log_pi: torch.Tensor,
    omega: torch.Tensor,
    row_weights: torch.Tensor,
    compute_grads: bool,
    point_tile: int,
    pack_tile: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    fused = _fused(z.device)
    with fused.device_guard(z.device):
        return fused.consistency_distillation_forward(
            z,
            (teacher_mu, teacher_log_sigma, teacher_nu, teacher_log_pi),
            (student_mu, student_log_sigma, student_nu, student_log_pi),
            omega,
            row_weights,
            compute_grads=compute_grads,
            tiles=fused.tiles_or_default(point_tile, pack_tile),
        )


consistency_distillation = _register("consistency_distillation", _consistency_distillation_impl)


@consistency_distillation.register_fake
def _(z, t_mu, t_log_sigma, t_nu, t_log_pi, s_mu, s_log_sigma, s_nu, s_log_pi, omega, row_weights,
      compute_grads, point_tile, pack_tile):
    dtype = _compute_dtype(z, t_mu, t_log_sigma, t_nu, t_log_pi, s_mu, s_log_sigma, s_nu, s_log_pi,
                           omega, row_weights)
    batch, components, dim = s_mu.shape
    grads_shape = (batch, components, packed_width(dim)) if compute_grads else (0,)
    return z.new_empty((batch,), dtype=dtype), z.new_empty(grads_shape, dtype=dtype)


def _distillation_setup(ctx, inputs, output):
    _, row_grads = output
    ctx.mark_non_differentiable(row_grads)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(row_grads)
    ctx.student_dtypes = [t.dtype for t in inputs[5:9]]
    ctx.dim = inputs[5].shape[-1]


def _distillation_backward(ctx, grad_per_row, _grad_row_grads):
    (row_grads,) = ctx.saved_tensors
    student = [None] * 4
    if grad_per_row is not None and any(ctx.needs_input_grad[5:9]):
        if row_grads.numel() == 0:
            raise RuntimeError("casd::consistency_distillation ran with compute_grads=False; "
                               "call casd.kernels.consistency_distillation, which sets it")
        scaled = row_grads * grad_per_row.to(row_grads.dtype)[:, None, None]  # the whole backward
        views = unpack_gradients(scaled, ctx.dim)
        student = [
            g.to(dtype) if needed else None
            for g, dtype, needed in zip(views, ctx.student_dtypes, ctx.needs_input_grad[5:9])
        ]
    return (None,) * 5 + tuple(student) + (None,) * 5


consistency_distillation.register_autograd(_distillation_backward, setup_context=_distillation_setup)


# ----------------------------------------------------------------------------------------
# student_t_rsample
# ----------------------------------------------------------------------------------------


def _student_t_rsample_impl(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    scales: torch.Tensor,
    key: torch.Tensor,
    eps: torch.Tensor | None,
    point_tile: int,
    pack_tile: int,
) -> torch.Tensor:
    fused = _fused(mu.device)
    with fused.device_guard(mu.device):
        return fused.student_t_rsample_forward(
            mu, log_sigma, scales, key, eps, fused.tiles_or_default(point_tile, pack_tile)
        )


student_t_rsample = _register("student_t_rsample", _student_t_rsample_impl)


@student_t_rsample.register_fake
def _(mu, log_sigma, scales, key, eps, point_tile, pack_tile):
    batch, components, dim = mu.shape
    shape = (batch, components, scales.shape[2], dim)
    return mu.new_empty(shape, dtype=_compute_dtype(mu, log_sigma, scales, eps))


def _student_t_rsample_backward_impl(
    grad_z: torch.Tensor,
    log_sigma: torch.Tensor,
    scales: torch.Tensor,
    key: torch.Tensor,
    eps: torch.Tensor | None,
    mu_dtype: torch.dtype,
    point_tile: int,
    pack_tile: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fused = _fused(grad_z.device)
    with fused.device_guard(grad_z.device):
        return fused.student_t_rsample_backward(
            grad_z, log_sigma, scales, key, eps, mu_dtype, fused.tiles_or_default(point_tile, pack_tile)
        )


student_t_rsample_backward = _register("student_t_rsample_backward", _student_t_rsample_backward_impl)


@student_t_rsample_backward.register_fake
def _(grad_z, log_sigma, scales, key, eps, mu_dtype, point_tile, pack_tile):
    return torch.empty_like(log_sigma, dtype=mu_dtype), torch.empty_like(log_sigma), torch.empty_like(scales)


def _rsample_setup(ctx, inputs, output):
    mu, log_sigma, scales, key, eps, point_tile, pack_tile = inputs
    # mu is not needed (d/dmu = sum_s g); eps is saved only on the test path
    ctx.save_for_backward(log_sigma, scales, key, eps)
    ctx.mu_dtype, ctx.tiles = mu.dtype, (point_tile, pack_tile)


def _rsample_backward(ctx, grad_z):
    log_sigma, scales, key, eps = ctx.saved_tensors
    grads = torch.ops.casd.student_t_rsample_backward(grad_z, log_sigma, scales, key, eps, ctx.mu_dtype, *ctx.tiles)
    grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[:3])]
    return (*grads, None, None, None, None)


student_t_rsample.register_autograd(_rsample_backward, setup_context=_rsample_setup)


# ----------------------------------------------------------------------------------------
# keyed Gamma draws (not differentiable)
# ----------------------------------------------------------------------------------------


def _keyed_standard_gamma_impl(nu: torch.Tensor, key: torch.Tensor, samples: int) -> torch.Tensor:
    fused = _fused(nu.device)
    with fused.device_guard(nu.device):
        return fused.keyed_standard_gamma_forward(nu, key, samples, fused.tiles_or_default(0, 0))


keyed_standard_gamma = _register("keyed_standard_gamma", _keyed_standard_gamma_impl)


@keyed_standard_gamma.register_fake
def _(nu, key, samples):
    return nu.new_empty((*nu.shape, samples), dtype=_compute_dtype(nu))
