#!/usr/bin/env bash
# One prepared command for a lent GPU machine: the versions and each kernel's registers and spills
# as the JIT compiles them there, kernel tests on CUDA, the fused training step under
# torch.compile(fullgraph=True) and in a CUDA graph, a trimmed benchmark sweep (five paths per
# op: eager / compiled reference, fused eager / compiled / CUDA graph), launch and sync counts,
# the report. Everything lands in OUTDIR; a short table is printed last.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Needs python3 with torch, triton, pytest, pytest-benchmark (nvidia-ml-py optional); no network,
# no pip install: benchmarks/repo_imports.py makes casd and casd.kernels importable from the
# checkout. Each stage runs under its own timeout inside a total budget (CASD_GPU_CHECK_BUDGET,
# default 480 s), so one stuck stage cannot eat the rest; failures are recorded and the script
# goes on. Without a GPU it rehearses the same stages on tiny shapes, the fused kernels through
# Triton's interpreter, so that the GPU run cannot fail on a typo.
#
# OUTDIR receives (9 files at most): gpu_check.log, kernels.json (torch/Triton versions, registers
# and spills per kernel and shape), step_check.json,
# bench_ops_fp32.json, bench_e2e.json, bench_ops_bf16.json, summary.md, speedups.png,
# profile.tar.gz.
set -u

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2

PY="${PYTHON:-python3}"
BUDGET="${CASD_GPU_CHECK_BUDGET:-480}"  # seconds for everything (a lent machine gives 15 minutes in all)
RESERVE=25                             # kept back for the report and the final table
START=$SECONDS
LOG="$OUT/gpu_check.log"
STAGE_LOG="$(mktemp)"
PROFILE_DIR="$(mktemp -d)/profile"
trap 'rm -rf "$STAGE_LOG" "$(dirname "$PROFILE_DIR")"' EXIT
: > "$LOG"

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PYTEST=("$PY" -m pytest -p benchmarks.repo_imports -p no:cacheprovider)

STAGES=()
record() {  # name status seconds
    STAGES+=("$(printf '%-22s %-34s %5ss' "$1" "$2" "$3")")
    printf '[gpu_check] %-22s %-34s %5ss\n' "$1" "$2" "$3"
}

run_stage() {  # name max_seconds command...
    local name=$1 max=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START) - RESERVE))
    local limit=$((max < left ? max : left))
    : > "$STAGE_LOG"  # a skipped stage must not leave the previous stage's output to be read as its own
    if [ "$limit" -lt 20 ]; then
        record "$name" "skipped (out of time budget)" 0
        return
    fi
    printf '\n===== %s (limit %ss): %s\n' "$name" "$limit" "$*" >> "$LOG"
    local t0=$SECONDS rc status
    # SIGINT first: pytest then still writes its benchmark JSON for the cases that finished.
    timeout -s INT -k 15 "$limit" "$@" > "$STAGE_LOG" 2>&1
    rc=$?
    cat "$STAGE_LOG" >> "$LOG"
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after ${limit}s" ;;
        5) status="no tests collected" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    record "$name" "$status" $((SECONDS - t0))
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        tail -n 15 "$STAGE_LOG" | sed 's/^/    | /'
    fi
}

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>> "$LOG"; then
    MODE=gpu
    SWEEP=(--bench-sweep target)
    E2E_SWEEP=(--bench-sweep axes)
else
    MODE=rehearsal
    SWEEP=(--bench-sweep smoke --bench-interpret)
    E2E_SWEEP=(--bench-sweep smoke --bench-interpret)
    echo "[gpu_check] no CUDA GPU: REHEARSAL on tiny shapes (fused kernels via Triton's interpreter)"
fi
BENCH=("${PYTEST[@]}" benchmarks/ --benchmark-only --bench-budget 0.3 --bench-e2e-budget 2)

# 1. Environment, and where casd / casd.kernels are imported from.
environment() {
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    uname -a
    echo "cpus: $(nproc)"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
    fi
    "$PY" - << 'EOF_PY'
import importlib, sys
import torch
from benchmarks.repo_imports import ensure_casd_importable
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("casd.kernels from", ensure_casd_importable())
for name in ("triton", "pytest", "pytest_benchmark", "pynvml", "matplotlib"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(no __version__)"))
    except ImportError as exc:
        print(name, "MISSING:", exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "SMs", p.multi_processor_count, "L2 bytes", getattr(p, "L2_cache_size", "?"))
EOF_PY
}
export PY
export -f environment
run_stage environment 60 bash -c environment

# 2. Registers and spills of every kernel as the JIT compiles it on this device, at the target
#    shapes (D = 128 first; no new shape after 40 s), with the torch and Triton versions. The
#    later stages then find these kernels in Triton's on-disk cache. (CI compiles the same
#    kernels ahead of time for sm_90 under Triton 3.6 and 3.9: tests/test_triton_versions.py.)
run_stage kernel-resources 60 "$PY" -m benchmarks.device_kernels --out "$OUT/kernels.json" --budget 40
KERNEL_TABLE="$(sed -n '/^kernels as compiled on the device/,$p' "$STAGE_LOG")"

# 3. The fused training step: inductor fullgraph vs eager (same numbers), and a CUDA graph
#    capture whose two replays must draw different noise.
run_stage step-check 70 "$PY" -m benchmarks.step_check --out "$OUT/step_check.json"

# 4-6. Benchmarks: fp32 ops at the target shape (five paths each), the end-to-end step
#    (+ profiler traces) and the launch/sync counts; bf16 ops last, after the kernel tests.
run_stage bench-ops-fp32 110 "${BENCH[@]}" -k test_op "${SWEEP[@]}" --bench-dtypes fp32 \
    --benchmark-json "$OUT/bench_ops_fp32.json"
run_stage bench-e2e 70 "${BENCH[@]}" -k "test_train_step or test_counts" "${E2E_SWEEP[@]}" \
    --bench-profile-dir "$PROFILE_DIR" --benchmark-json "$OUT/bench_e2e.json"
# 7. The kernel tests on CUDA (in the rehearsal: on the CPU through the interpreter, which does
#    not finish in time). The slow ones (Inductor on the CPU, the CPU-side compile check) are
#    covered by stages 2 and 3. After the measurements: each kernel variant JIT-compiles here.
KERNEL_TESTS=()
for f in tests/test_kernel_*.py tests/test_runtime.py; do
    [ -f "$f" ] && KERNEL_TESTS+=("$f")
done
if [ ${#KERNEL_TESTS[@]} -gt 0 ]; then
    run_stage kernel-tests 150 "${PYTEST[@]}" -q -m "not slow" "${KERNEL_TESTS[@]}"
else
    record kernel-tests "no tests/test_kernel_*.py found" 0
fi

# 8. bf16 ops with what is left.
run_stage bench-ops-bf16 110 "${BENCH[@]}" -k test_op "${SWEEP[@]}" --bench-dtypes bf16 \
    --benchmark-json "$OUT/bench_ops_bf16.json"
if [ -d "$PROFILE_DIR" ]; then
    tar -czf "$OUT/profile.tar.gz" -C "$(dirname "$PROFILE_DIR")" profile && \
        echo "profile traces: $OUT/profile.tar.gz ($(ls "$PROFILE_DIR" | tr '\n' ' '))" >> "$LOG"
fi

# 9. The report over whatever JSON was written, then the short table.
JSONS=()
for f in "$OUT"/bench_ops_fp32.json "$OUT"/bench_e2e.json "$OUT"/bench_ops_bf16.json; do
    if [ -s "$f" ]; then
        JSONS+=("$f")
    else
        rm -f "$f"  # pytest-benchmark leaves an empty file when every case was skipped
    fi
done
REPORT_SHORT=""
if [ ${#JSONS[@]} -gt 0 ]; then
    RESERVE=0
    run_stage report 60 "$PY" -m benchmarks.report "${JSONS[@]}" --out "$OUT" --short
    REPORT_SHORT="$(cat "$STAGE_LOG")"
else
    record report "no benchmark JSON to report" 0
fi

echo
echo "================ gpu_check ($MODE) finished in $((SECONDS - START))s; files in $OUT ================"
printf '%s\n' "${STAGES[@]}"
echo
printf '%s\n' "${KERNEL_TABLE:-kernels.json: no kernel table (see gpu_check.log)}"
echo
printf '%s\n' "$REPORT_SHORT"
ls -la "$OUT"
