"""Compile every Triton kernel for a GPU target, without a GPU, and report registers and spills.

    python -m benchmarks.compile_kernels [--arch 90] [--dims 64 96 100 120 128 256] [--dtypes fp32 bf16]
        [--batch 4096 --components 7 --samples 4] [--json]

Each kernel is compiled with the installed Triton and its bundled ptxas exactly as the
launchers would launch it at that shape (``casd.kernels.fused.compile_check``); the
register count and stack bytes come from ``cuobjdump``. Stack bytes > 0 means spills.
Prints a table (or, with ``--json``, a JSON line naming the Triton version and the
compiled ``casd.kernels`` folder, then one per kernel) and exits 1 if a fp32/bf16/fp16 kernel
spills. Works from a plain checkout (no ``pip install``) and under any Triton that
``setup.py`` supports, e.g. a second environment with the GPU machines' Triton 3.6.
"""
from __future__ import annotations

import os
import sys

# Compiled mode: Triton decides at import whether @triton.jit functions are interpreted, and
# casd.kernels would choose the interpreter on a machine without CUDA.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its and 3.6's default
import triton  # noqa: E402,F401

from benchmarks.repo_imports import ensure_casd_importable  # noqa: E402

KERNELS_DIR = ensure_casd_importable()

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402

from casd.kernels.fused.compile_check import compile_spec, kernel_specs  # noqa: E402


_SPECS: list = []
_ARCH = 90


def _compile(index: int) -> dict:
    return compile_spec(_SPECS[index][1], _ARCH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the Triton kernels for a GPU target; report registers and spills.")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--components", type=int, default=7)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 96, 100, 120, 128, 256])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16", "fp64"])
    parser.add_argument("--json", action="store_true", help="one JSON object per kernel instead of a table")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile in this many processes")
    args = parser.parse_args(argv)
    global _SPECS, _ARCH
    _SPECS = [(dtype, spec) for dtype in args.dtypes for dim in args.dims
              for spec in kernel_specs(args.batch, args.components, args.samples, dim, dtype)]
    _ARCH = args.arch
    spilled = []
    if args.json:
        print(json.dumps({"triton": triton.__version__, "kernels": KERNELS_DIR}), flush=True)
    else:
        print(f"Triton {triton.__version__}, sm_{args.arch}, B={args.batch} K={args.components} S={args.samples}")
        print(f"{'kernel':<36} {'regs':>5} {'stack':>6} {'warps':>6} {'maxnreg':>8}")
    # fork: the workers inherit the kernel definitions (nothing to pickle but an index)
    with multiprocessing.get_context("fork").Pool(max(1, min(args.jobs, len(_SPECS)))) as pool:
        for (dtype, _), result in zip(_SPECS, pool.imap(_compile, range(len(_SPECS)))):
            if result["stack"] and dtype != "fp64":
                spilled.append(result["name"])
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print(f"{result['name']:<36} {result['regs']:>5} {result['stack']:>6} {result['warps']:>6} "
                      f"{result['maxnreg'] or '-':>8}", flush=True)
    if spilled:
        print(f"SPILLS in {len(spilled)} kernel(s): {', '.join(spilled)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
