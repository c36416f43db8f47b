"""Compile every kernel for a GPU ahead of time, as the launchers configure it, and read its
register and stack (spill) use from the cubin. No GPU is needed.

The command line is ``python -m benchmarks.compile_kernels`` (it must import Triton in
compiled mode before ``casd.kernels`` could choose the interpreter); CI runs it from
``tests/test_runtime.py`` and fails on any spill, and it runs the same under another
Triton version from a plain checkout.

``kernel_specs`` mirrors what the launchers pass at a given shape — signature, compile-time
constants, warps — from the same helpers (``launch.point_tile``, ``rsample_launch``, ...),
so a launch setting changed there is what gets compiled here. Pointer arguments and integer
sizes divisible by 16 get Triton's divisibility hint, as the JIT would give them.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import triton
import triton.language as tl

from . import consistency_distillation as cd
from . import gamma
from . import mixture_logpdf as mix
from . import student_t_rsample as rs
from ..packing import packed_width
from .launch import GPU_TILES, LaunchOptions, point_tile

__all__ = ["KernelSpec", "kernel_specs", "compile_spec"]

_POINTER = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel as a launcher would launch it at one shape."""

    name: str
    fn: object  # the @triton.jit function
    signature: dict[str, str]  # runtime arguments: Triton type strings ("*fp32", "i32")
    constexprs: dict[str, object]
    options: LaunchOptions
    sizes: dict[str, int] = field(default_factory=dict)  # integer arguments' values (divisibility)


def kernel_specs(batch: int, components: int, samples: int, dim: int, dtype: str) -> list[KernelSpec]:
    """The six kernels (mixture forward/backward, distillation forward, sampler forward/
    backward, keyed Gamma draws) at B rows, K components, S samples (P = K * S points), in ``dtype``
    ("fp32", "bf16", "fp16": fp32 compute; "fp64": fp64 compute). nu, log pi, omega and the
    row weights are fp32 as the model produces them (fp64 on the fp64 path)."""
    data = _POINTER[dtype]
    fp64 = dtype == "fp64"
    small = "*fp64" if fp64 else "*fp32"  # O(B*K) and O(B*P) tensors, and every output
    compute = tl.float64 if fp64 else tl.float32
    points = components * samples
    tag = f"D={dim} {dtype}"
    specs = []

    block_r, block_p, block_d = point_tile(batch, points, dim, GPU_TILES)
    tile = block_r * block_p * block_d
    blocks = dict(D=dim, COMPUTE=compute, BLOCK_R=block_r, BLOCK_P=block_p, BLOCK_D=block_d,
                  BLOCK_K=triton.next_power_of_2(components))
    shape = dict(B="i32", P="i32", K="i32")
    sizes = dict(B=batch, P=points, K=components)
    mixture = dict(mu_ptr=data, log_sigma_ptr=data, nu_ptr=small, log_pi_ptr=small)
    specs.append(KernelSpec(
        f"mixture forward {tag}", mix._mixture_logpdf_forward_kernel,
        dict(z_ptr=data, **mixture, out_ptr=small, **shape), blocks,
        mix.FORWARD_WARPS.options(tile), sizes,
    ))
    # one point tile: the gradients are written straight into [B, K(, D)] tensors
    specs.append(KernelSpec(
        f"mixture backward {tag}", mix._mixture_logpdf_backward_kernel,
        dict(grad_out_ptr=small, out_ptr=small, z_ptr=data, **mixture, grad_z_ptr=data, grad_mu_ptr=data,
             grad_log_sigma_ptr=data, grad_nu_ptr=small, grad_log_pi_ptr=small, **shape),
        {**blocks, "VECTOR_WIDTH": dim, "SCALAR_WIDTH": 1, "NEEDS_GRAD_Z": True},
        mix.BACKWARD_WARPS.options(tile), sizes,
    ))
    specs.append(KernelSpec(
        f"distillation forward {tag}", cd._consistency_forward_kernel,
        dict(z_ptr=data, **{f"teacher_{n}": t for n, t in mixture.items()},
             **{f"student_{n}": t for n, t in mixture.items()}, omega_ptr=small, row_weight_ptr=small,
             partial_ptr=small, grad_mu_ptr=small, grad_log_sigma_ptr=small, grad_nu_ptr=small,
             grad_log_pi_ptr=small, **shape),
        {**blocks, "GRAD_WIDTH": packed_width(dim), "COMPUTE_GRADS": True},
        mix.BACKWARD_WARPS.options(tile), sizes,
    ))

    launch = rs.rsample_launch(batch, components, samples, dim, GPU_TILES)
    consts = dict(D=dim, COMPUTE=compute, BLOCK_C=launch.block_c, BLOCK_D=launch.block_d, HAS_NOISE=False,
                  KEY_PER_ROW=True)
    sizes = dict(C=launch.components, K=components, S=samples)
    ints = dict(C="i32", K="i32", S="i32")
    specs.append(KernelSpec(
        f"rsample forward {tag}", rs._rsample_forward_kernel,
        dict(mu_ptr=data, log_sigma_ptr=data, scales_ptr=small, eps_ptr=data, key_ptr="*i64", z_ptr=small, **ints),
        consts, launch.options, sizes,
    ))
    specs.append(KernelSpec(
        f"rsample backward {tag}", rs._rsample_backward_kernel,
        dict(grad_z_ptr=small, log_sigma_ptr=data, scales_ptr=small, eps_ptr=data, key_ptr="*i64", grad_mu_ptr=data,
             grad_log_sigma_ptr=data, grad_scales_ptr=small, **ints),
        consts, launch.options, sizes,
    ))
    total = batch * components * samples
    block = min(triton.next_power_of_2(total), GPU_TILES.pack_tile // 4)
    specs.append(KernelSpec(
        f"keyed gamma {tag}", gamma._keyed_gamma_kernel,
        dict(nu_ptr=small, key_ptr="*i64", out_ptr=small, N="i32", S="i32", KS="i32"),
        dict(COMPUTE=compute, BLOCK=block, ATTEMPTS=gamma.GAMMA_ATTEMPTS, KEY_PER_ROW=True),
        gamma.WARPS.options(block), dict(N=total, S=samples, KS=components * samples),
    ))
    return specs


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_spec(spec: KernelSpec, arch: int = 90) -> dict:
    """Compile for sm_<arch> with Triton's bundled ptxas; return registers and stack bytes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, (arg, kind) in enumerate(spec.signature.items())
        if kind.startswith("*") or spec.sizes.get(arg, 1) % 16 == 0
    }
    signature = {**spec.signature, **{name: "constexpr" for name in spec.constexprs}}
    start = time.perf_counter()
    kernel = triton.compile(
        ASTSource(spec.fn, signature, spec.constexprs, attrs),
        target=GPUTarget("cuda", arch, 32),
        options=spec.options.kwargs(),
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
        path = f.name
    try:
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                               check=True).stdout
    finally:
        os.unlink(path)
    fields = dict(item.split(":") for item in usage.split() if item.startswith(("REG:", "STACK:")))
    return {"name": spec.name, "regs": int(fields["REG"]), "stack": int(fields["STACK"]),
            "warps": spec.options.num_warps, "maxnreg": spec.options.maxnreg, "triton": triton.__version__,
            "seconds": round(time.perf_counter() - start, 2)}
