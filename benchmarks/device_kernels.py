"""Registers and spills of every fused kernel as Triton's JIT compiled it on this GPU.

    python -m benchmarks.device_kernels --out kernels.json [--budget 45]

``tests/test_triton_versions.py`` proves on a CPU that the kernels compile for sm_90 without
spills; this is the same question asked of the real thing, on the lent GPU machine with its
own torch, Triton and ptxas (``gpu_check.sh`` runs it as its second stage). For each target
shape, in order of importance (D = 128 first, the performance target), the three fused ops
run forward and backward once through the launchers the benchmarks time
(``benchmarks/test_bench_ops.py``), so the JIT compiles each kernel exactly as the launchers
configure it. Every compiled kernel is then read out of the JIT's in-memory caches:

- ``n_regs`` and ``n_spills`` as the CUDA driver reports them when the cubin is loaded
  (Triton sets ``n_spills`` to the function's local-memory bytes / 4);
- ``REG``, ``STACK``, ``SHARED`` and ``LOCAL`` of the cubin, from the cuobjdump in Triton's
  wheel (the numbers the CPU check reads), when it is there.

The caches are emptied before each shape, so each shape lists exactly the kernels it ran
(compiling again is a hit in Triton's on-disk cache). The JSON holds the torch, CUDA and
Triton versions and the device, and is rewritten after every shape: a stage timeout leaves
the shapes that finished. An error is recorded with its shape and the script goes on; it
exits 1 only when nothing could be measured at all. Without CUDA it rehearses on a tiny
shape through Triton's interpreter, where nothing is compiled (an empty kernel list).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.repo_imports import ensure_casd_importable

KERNELS_DIR = ensure_casd_importable()  # before anything imports triton: picks the mode

import torch  # noqa: E402

from benchmarks.measure import DTYPES, Shape  # noqa: E402

__all__ = ["TARGET_SHAPES", "cubin_usage", "compiled_kernels", "main"]

OPS = ("mixture_logpdf", "student_t_rsample", "consistency_distillation")
# (D, dtype) at B = 4096, K = 7, S = 4, most important first: a budget cut drops the tail.
TARGET_SHAPES = [(Shape(4096, 7, 4, d), dtype) for d in (128, 256, 64, 96) for dtype in ("fp32", "bf16")]
REHEARSAL_SHAPES = [(Shape(4, 7, 2, 8), "fp32")]


def cubin_usage(cubin: bytes, cuobjdump: str | None) -> dict | None:
    """REG/STACK/SHARED/LOCAL of a one-kernel cubin, from ``cuobjdump --dump-resource-usage``."""
    if not cuobjdump:
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    fields = dict(item.split(":", 1) for item in out.split() if item.startswith(("REG:", "STACK:", "SHARED:", "LOCAL:")))
    return {key: int(value) for key, value in fields.items()}


def _find_cuobjdump() -> str | None:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.access(bundled, os.X_OK) else shutil.which("cuobjdump")


def _jit_functions() -> dict[str, object]:
    """Every @triton.jit function of the loaded casd.kernels modules that holds JIT caches."""
    found = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("casd.kernels") or module is None:
            continue
        for attr, obj in vars(module).items():
            if hasattr(obj, "device_caches"):  # JITFunction; interpreted functions have none
                found.setdefault(f"{getattr(obj, '__module__', module_name)}.{attr}", obj)
    return found


def _attr(obj, name: str):
    """obj.name, or None: a reading that cannot be taken must not end the run."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - e.g. a lazy attribute whose loader needs a driver
        return None


def compiled_kernels(functions: dict[str, object], cuobjdump: str | None) -> list[dict]:
    """One record per kernel compiled into the functions' JIT caches."""
    records = []
    for name, fn in sorted(functions.items()):
        for device, entry in list(fn.device_caches.items()):
            for kernel in list(entry[0].values()):  # (kernel_cache, ...): key -> CompiledKernel
                metadata = _attr(kernel, "metadata")
                record = {
                    "kernel": name.rsplit(".", 1)[-1],
                    "module": name.rsplit(".", 1)[0],
                    "device": device,
                    "num_warps": _attr(metadata, "num_warps"),
                    "maxnreg": _attr(metadata, "maxnreg"),
                    "shared_bytes": _attr(metadata, "shared"),
                    "n_regs": _attr(kernel, "n_regs"),  # set when the driver loaded the cubin
                    "n_spills": _attr(kernel, "n_spills"),
                }
                try:
                    record["cubin"] = cubin_usage(kernel.asm["cubin"], cuobjdump)
                except Exception as exc:  # noqa: BLE001 - a reading that failed is recorded
                    record["cubin"] = {"error": repr(exc)}
                records.append(record)
    return records


def _environment(device: torch.device) -> dict:
    import triton

    env = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "gpu" if device.type == "cuda" else "rehearsal (Triton interpreter: nothing is compiled)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton.__version__,
        "kernels_from": KERNELS_DIR,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                         "sms": props.multi_processor_count}
    return env


def _write(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def _warm_up(shape: Shape, dtype: str, device: torch.device) -> None:
    """Forward and backward of each op once, through the benchmarks' launchers and inputs."""
    from benchmarks.cases import OpCase
    from benchmarks.test_bench_ops import OpRunner, make_inputs, provider_fn

    for op in OPS:
        inputs = make_inputs(op, shape, DTYPES[dtype], device, seed=0, backward=True)
        fn = provider_fn(OpCase(op=op, mode="fwd+bwd", provider="triton", shape=shape, dtype=dtype), device)
        OpRunner(fn, [inputs], backward=True)(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(result: dict) -> str:
    """A short text table of the records (what gpu_check.sh prints last)."""
    lines = [f"kernels as compiled on the device: torch {result['torch']}, Triton {result['triton']}, "
             f"{result.get('device', {}).get('name', result['mode'])}",
             f"{'shape':<22} {'kernel':<34} {'warps':>5} {'regs':>5} {'spills':>6} {'stack':>6}"]
    for entry in result["shapes"]:
        tag = f"D={entry['D']} {entry['dtype']}"
        if entry.get("error"):
            lines.append(f"{tag:<22} ERROR {entry['error'].splitlines()[-1][:90]}")
        for k in entry["kernels"]:
            stack = (k.get("cubin") or {}).get("STACK", "?")
            spill = "  SPILL" if (k["n_spills"] or 0) > 0 or (isinstance(stack, int) and stack > 0) else ""
            lines.append(f"{tag:<22} {k['kernel']:<34} {k['num_warps'] or '?':>5} {k['n_regs'] or '?':>5} "
                         f"{k['n_spills'] if k['n_spills'] is not None else '?':>6} {stack:>6}{spill}")
        if not entry["kernels"] and not entry.get("error"):
            lines.append(f"{tag:<22} (no compiled kernels: {result['mode']})")
    if result.get("skipped"):
        lines.append(f"not measured (out of budget): {', '.join(result['skipped'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--budget", type=float, default=45.0,
                        help="seconds after which no further shape is started (default 45)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from casd.kernels import runtime

    runtime.triton_ops(device)  # loads the kernel modules in this device's mode
    functions = _jit_functions()
    cuobjdump = _find_cuobjdump() if device.type == "cuda" else None
    result = {**_environment(device), "cuobjdump": cuobjdump, "shapes": [], "skipped": []}
    shapes = TARGET_SHAPES if device.type == "cuda" else REHEARSAL_SHAPES
    for shape, dtype in shapes:
        tag = f"B={shape.B} K={shape.K} S={shape.S} D={shape.D} {dtype}"
        if time.perf_counter() - t0 > args.budget:
            result["skipped"].append(tag)
            continue
        entry = {"B": shape.B, "K": shape.K, "S": shape.S, "D": shape.D, "dtype": dtype, "kernels": []}
        t_shape = time.perf_counter()
        try:
            for fn in functions.values():
                fn.device_caches.clear()
            _warm_up(shape, dtype, device)
            entry["kernels"] = compiled_kernels(functions, cuobjdump)
        except Exception:  # noqa: BLE001 - recorded; the next shape may still work
            entry["error"] = traceback.format_exc(limit=6)
        entry["seconds"] = round(time.perf_counter() - t_shape, 2)
        result["shapes"].append(entry)
        _write(args.out, result)
        print(f"{tag}: {len(entry['kernels'])} kernels, {entry['seconds']} s"
              + (" ERROR" if entry.get("error") else ""), flush=True)
    _write(args.out, result)
    print(table(result))
    return 0 if any(not entry.get("error") for entry in result["shapes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
