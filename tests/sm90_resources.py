"""Registers and stack of every fused kernel compiled for an H100 (sm_90), without a GPU.

Compiles each kernel with the running Python's Triton and the ptxas bundled in its wheel,
using the launch configurations the launchers pick at the target shapes, then reads each
cubin's resource usage with the bundled cuobjdump. Prints one JSON line with the Triton
version, then one per kernel. A ``STACK`` above zero means ptxas spilled registers to
local memory. ``tests/test_triton_versions.py`` runs it once per Triton version; by hand:

    python tests/sm90_resources.py          # this checkout's casd and kernels

Run it in a fresh process: Triton picks interpreted or compiled mode at import, and the
test process holds interpreted kernels. ``--casd-dir``/``--kernels-dir`` say which
``casd`` and ``casd.kernels`` to compile (default: this checkout's; the test passes the
ones it imported), so the result does not depend on how, or whether, casd is installed
in this Python.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The target shape: B = 4096 rows, K = 7 components, P = K * S = 28 points
# (S = 4 samples per component), at every D the launch heuristics serve.
BATCH, COMPONENTS, SAMPLES, POINTS = 4096, 7, 4, 28
TARGET_DIMS = (64, 96, 128, 256)
TARGET_DTYPES = ("fp32", "bf16")
# The float64 test path (gradchecks, references) only has to compile; spills allowed.
FP64_DIM = 48
KERNELS = ("mixture forward", "mixture backward", "consistency forward", "rsample forward", "rsample backward")


def kernel_name(kernel: str, dim: int, dtype: str) -> str:
    return f"{kernel} D={dim} {dtype}"


def target_names() -> list[str]:
    """Every kernel at every target shape: these must not spill."""
    return [kernel_name(k, d, t) for d in TARGET_DIMS for t in TARGET_DTYPES for k in KERNELS]


def fp64_names() -> list[str]:
    return [kernel_name(k, FP64_DIM, "fp64") for k in KERNELS]


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Imports the named packages from the given folders, ahead of anything installed."""

    def __init__(self, packages: dict[str, Path]):
        self.packages = packages

    def find_spec(self, name, path=None, target=None):
        where = self.packages.get(name)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(
            name, where / "__init__.py", submodule_search_locations=[str(where)]
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--casd-dir", type=Path, default=repo / "casd", help="folder of the casd package")
    parser.add_argument("--kernels-dir", type=Path, default=repo / "kernels", help="folder of casd.kernels")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    sys.meta_path.insert(0, _CheckoutFinder({"casd": args.casd_dir.resolve(),
                                             "casd.kernels": args.kernels_dir.resolve()}))

    import triton, triton.language as tl  # noqa: E401
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from casd.kernels import launch
    import casd.kernels.consistency_distillation as cd
    import casd.kernels.mixture_logpdf as mix
    import casd.kernels.student_t_rsample as rs

    print(json.dumps({"triton": triton.__version__, "kernels": str(Path(launch.__file__).parent)}), flush=True)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

    def compile_one(name, fn, args, consts, options, sizes):
        t0 = time.perf_counter()
        # the JIT specialises pointers and sizes divisible by 16; mirror that
        attrs = {(i,): [["tt.divisibility", 16]] for i, (arg, kind) in enumerate(args.items())
                 if kind.startswith("*") or sizes.get(arg, 1) % 16 == 0}
        signature = {**args, **{c: "constexpr" for c in consts}}
        kernel = triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                options=options)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.cubin")
            with open(path, "wb") as f:
                f.write(kernel.asm["cubin"])
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                                   check=True).stdout
        fields = dict(item.split(":") for item in usage.split() if item.startswith(("REG:", "STACK:")))
        print(json.dumps({"name": name, "regs": int(fields["REG"]), "stack": int(fields["STACK"]),
                          "warps": options["num_warps"], "maxnreg": options.get("maxnreg"),
                          "seconds": round(time.perf_counter() - t0, 2)}), flush=True)

    def mixture_kernels(batch, points, components, dim, dtype, compute):
        out = "*fp64" if compute == tl.float64 else "*fp32"
        block_r, block_p, block_d = launch.point_tile(batch, points, dim, launch.GPU_TILES)
        tile = block_r * block_p * block_d
        consts = dict(COMPUTE=compute, BLOCK_R=block_r, BLOCK_P=block_p, BLOCK_D=block_d)
        sizes = dict(B=batch, P=points, K=components, D=dim)
        ints = dict(B="i32", P="i32", K="i32", D="i32")
        tag = f"D={dim} {dtype[1:]}"
        compile_one(f"mixture forward {tag}", mix._mixture_logpdf_forward_kernel,
                    dict(z_ptr=dtype, mu_ptr=dtype, log_sigma_ptr=dtype, nu_ptr=dtype, log_coef_ptr="*fp64",
                         out_ptr=out, **ints),
                    consts, launch.launch_options(tile, mix.VALUES_PER_THREAD), sizes)
        compile_one(f"mixture backward {tag}", mix._mixture_logpdf_backward_kernel,
                    dict(grad_out_ptr=out, out_ptr=out, z_ptr=dtype, mu_ptr=dtype, log_sigma_ptr=dtype,
                         nu_ptr=dtype, log_coef_ptr="*fp64", grad_z_ptr=dtype, grad_mu_ptr=dtype,
                         grad_log_sigma_ptr=dtype, grad_nu_ptr=dtype, grad_log_coef_ptr="*fp64", **ints),
                    {**consts, "NEEDS_GRAD_Z": True},
                    launch.launch_options(tile, mix.VALUES_PER_THREAD, two_programs_per_sm=True), sizes)
        compile_one(f"consistency forward {tag}", cd._consistency_forward_kernel,
                    dict(z_ptr=dtype, teacher_mu_ptr=dtype, teacher_log_sigma_ptr=dtype, teacher_nu_ptr=dtype,
                         teacher_log_coef_ptr="*fp64", student_mu_ptr=dtype, student_log_sigma_ptr=dtype,
                         student_nu_ptr=dtype, student_log_coef_ptr="*fp64", omega_ptr=dtype,
                         row_weight_ptr=dtype, log_p_student_ptr=out, partial_ptr=out, **ints),
                    consts, launch.launch_options(tile, mix.VALUES_PER_THREAD), sizes)

    def rsample_kernels(batch, components, samples, dim, dtype, compute):
        out = "*fp64" if compute == tl.float64 else "*fp32"
        mu = type("Shape", (), {"shape": (batch, components, dim)})()
        cfg = rs._launch_config(mu, samples, launch.GPU_TILES)
        consts = dict(COMPUTE=compute, BLOCK_C=cfg["block_c"], BLOCK_D=cfg["block_d"], HAS_NOISE=False)
        sizes = dict(C=batch * components, S=samples, D=dim)
        ints = dict(seed="i32", C="i32", S="i32", D="i32")
        tag = f"D={dim} {dtype[1:]}"
        compile_one(f"rsample forward {tag}", rs._rsample_forward_kernel,
                    dict(mu_ptr=dtype, log_sigma_ptr=dtype, w_ptr=dtype, eps_ptr=dtype, z_ptr=out, **ints),
                    consts, cfg["options"], sizes)
        compile_one(f"rsample backward {tag}", rs._rsample_backward_kernel,
                    dict(grad_z_ptr=out, log_sigma_ptr=dtype, w_ptr=dtype, eps_ptr=dtype, grad_mu_ptr=dtype,
                         grad_log_sigma_ptr=dtype, grad_w_ptr=dtype, **ints),
                    consts, cfg["options"], sizes)

    shapes = [(dim, f"*{dtype}", tl.float32) for dim in TARGET_DIMS for dtype in TARGET_DTYPES]
    for dim, dtype, compute in shapes + [(FP64_DIM, "*fp64", tl.float64)]:
        mixture_kernels(BATCH, POINTS, COMPONENTS, dim, dtype, compute)
        rsample_kernels(BATCH, COMPONENTS, SAMPLES, dim, dtype, compute)


if __name__ == "__main__":
    main()
