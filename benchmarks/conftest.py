"""pytest set-up of the benchmark suite: options, the parametrisation, session-wide measurements.

Run with ``pytest benchmarks/ --benchmark-only`` (pytest.ini's testpaths keep them out of a
plain ``pytest``). Options (see ``pytest --help``, section "casd benchmarks"):

    --bench-sweep {cpu,target,axes,full}   shapes to run (default: axes on a GPU, cpu otherwise)
    --bench-dtypes fp32,bf16               input dtypes (bf16 is skipped on the CPU)
    --bench-budget SECONDS                 timed rounds per op case
    --bench-e2e-budget SECONDS             timed steps per end-to-end case
    --bench-profile-dir DIR                write torch.profiler traces (or CASD_PROFILE_DIR=DIR)
    --bench-threads N                      CPU threads for PyTorch (a busy CPU: try 1)
    --bench-interpret                      no GPU: run the fused provider through Triton's
                                           interpreter (plumbing check with --bench-sweep smoke)
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import pytest
import torch

from benchmarks.repo_imports import ensure_casd_importable

KERNELS_DIR = ensure_casd_importable()  # a plain checkout works without pip install

from benchmarks import cases  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    DTYPES,
    NvmlReader,
    cache_bytes,
    copy_bandwidth_gbps,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_addoption(parser):
    group = parser.getgroup("casd benchmarks")
    group.addoption("--bench-sweep", choices=sorted(cases.SWEEPS), default=None,
                    help="shape sweep (default: axes with a GPU, cpu without)")
    group.addoption("--bench-dtypes", default="fp32,bf16",
                    help="comma-separated input dtypes of z, mu, log_sigma (fp32, bf16)")
    group.addoption("--bench-budget", type=float, default=None,
                    help="seconds of timed rounds per op case (default 0.5 on a GPU, 0.2 on the CPU)")
    group.addoption("--bench-e2e-budget", type=float, default=None,
                    help="seconds of timed training steps per end-to-end case (default 3 GPU, 2 CPU)")
    group.addoption("--bench-profile-dir", default=os.environ.get("CASD_PROFILE_DIR"),
                    help="write a torch.profiler chrome trace of a few training steps per "
                         "end-to-end case into this folder (default: $CASD_PROFILE_DIR; off if unset)")
    group.addoption("--bench-interpret", action="store_true", default=False,
                    help="without a GPU, run the fused kernels through Triton's CPU interpreter "
                         "instead of skipping them: a check of the benchmark plumbing (use "
                         "--bench-sweep smoke), not a measurement")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch.set_num_threads for the session (default: PyTorch's choice). On a "
                         "shared, busy CPU, 1 avoids thread-pool stalls that swamp small ops")


def _sweep(config) -> str:
    return config.getoption("--bench-sweep") or ("axes" if DEVICE.type == "cuda" else "cpu")


def _dtypes(config) -> list[str]:
    names = [d.strip() for d in config.getoption("--bench-dtypes").split(",") if d.strip()]
    unknown = sorted(set(names) - set(DTYPES))
    if unknown or not names:
        raise pytest.UsageError(f"--bench-dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    return names


def pytest_configure(config):
    # Raised inside torch.compile's own imports on recent PyTorch; nothing the suite can act on.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    threads = config.getoption("--bench-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    # Compile times are reported, so they must be cold: give Inductor and Triton fresh caches
    # for this session unless the caller chose cache folders explicitly.
    config._casd_tmp_caches = []
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        if var not in os.environ:
            path = tempfile.mkdtemp(prefix=f"casd-bench-{var.split('_')[0].lower()}-")
            os.environ[var] = path
            config._casd_tmp_caches.append(path)


def pytest_unconfigure(config):
    for path in getattr(config, "_casd_tmp_caches", []):
        shutil.rmtree(path, ignore_errors=True)


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "op_case" in metafunc.fixturenames:
        op_cases = cases.op_cases(_sweep(config), _dtypes(config))
        metafunc.parametrize("op_case", op_cases, ids=[c.id for c in op_cases])
    if "e2e_case" in metafunc.fixturenames:
        e2e_cases = cases.e2e_cases(_sweep(config))
        metafunc.parametrize("e2e_case", e2e_cases, ids=[c.id for c in e2e_cases])


def _triton_unavailable_reason(interpret: bool) -> str | None:
    """None when the fused kernels can run here (compiled on CUDA, or interpreted on request),
    else why not."""
    if DEVICE.type != "cuda" and not interpret:
        return ("no CUDA GPU: the fused kernels are timed only compiled on CUDA (Triton's CPU "
                "interpreter is a correctness tool, orders of magnitude too slow to time; "
                "--bench-interpret runs it anyway to check the plumbing)")
    from casd.kernels import runtime

    try:
        runtime.triton_ops(DEVICE)
    except runtime.BackendUnavailableError as exc:
        return f"backend 'triton' unavailable: {exc}"
    return None


@dataclass
class BenchEnv:
    """What every benchmark needs to know about this session; measured once."""

    device: torch.device
    sweep: str
    budget_s: float
    e2e_budget_s: float
    profile_dir: str | None
    interpret: bool  # the fused kernels run through Triton's CPU interpreter (plumbing check)
    copy_gbps: float
    cache_bytes: int
    triton_reason: str | None
    nvml: NvmlReader
    inductor_startup_s: float | None = None
    info: dict = field(default_factory=dict)

    def input_sets(self, set_bytes: int, limit: int = 8) -> int:
        """How many input sets to rotate through so that repeated calls cannot be served from cache."""
        if self.cache_bytes == 0 or set_bytes == 0:
            return 1
        return max(1, min(limit, -(-2 * self.cache_bytes // set_bytes)))

    def compile_startup(self) -> None:
        """Pay Inductor's one-off start-up (imports, worker pool, C++ headers) before the first
        measured compile, so that it is not booked to whichever case happens to run first."""
        if self.inductor_startup_s is not None:
            return
        started = time.perf_counter()
        warm = torch.compile(lambda x: torch.sin(x) * 2 + 1)
        warm(torch.randn(64, device=self.device))
        self.inductor_startup_s = time.perf_counter() - started
        self.info["inductor_startup_s"] = self.inductor_startup_s


@pytest.fixture(scope="session")
def bench_env(request) -> BenchEnv:
    config = request.config
    on_gpu = DEVICE.type == "cuda"
    interpret = not on_gpu and config.getoption("--bench-interpret")
    nvml = NvmlReader(DEVICE)
    env = BenchEnv(
        device=DEVICE,
        sweep=_sweep(config),
        budget_s=config.getoption("--bench-budget") or (0.5 if on_gpu else 0.2),
        e2e_budget_s=config.getoption("--bench-e2e-budget") or (3.0 if on_gpu else 2.0),
        profile_dir=config.getoption("--bench-profile-dir"),
        interpret=interpret,
        copy_gbps=copy_bandwidth_gbps(DEVICE),
        cache_bytes=cache_bytes(DEVICE),
        triton_reason=_triton_unavailable_reason(interpret),
        nvml=nvml,
    )
    env.info = {
        "device": torch.cuda.get_device_name(DEVICE) if on_gpu else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "sweep": env.sweep,
        "copy_gbps": env.copy_gbps,
        "cache_bytes": env.cache_bytes,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_at_start": _load_average(),
        "triton_unavailable": env.triton_reason,
        "triton_mode": "interpreter" if interpret else "compiled",
        "nvml_unavailable": None if nvml.available else nvml.reason,
        **nvml.static_info(),
    }
    config._casd_bench_info = env.info
    yield env
    nvml.shutdown()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    """Session-wide facts (device, versions, copy bandwidth) go into the JSON's machine_info."""
    machine_info["casd"] = getattr(config, "_casd_bench_info", {})


def pytest_report_header(config):
    lines = [
        f"casd benchmarks: device={DEVICE}, sweep={_sweep(config)}, dtypes={_dtypes(config)}, "
        f"casd.kernels from {KERNELS_DIR}",
    ]
    if DEVICE.type != "cuda" and config.getoption("--bench-interpret"):
        lines.append("casd benchmarks: no CUDA GPU, --bench-interpret: the fused kernels run through "
                     "Triton's interpreter (a plumbing check: their times mean nothing); bf16 skipped")
    elif DEVICE.type != "cuda":
        lines.append("casd benchmarks: no CUDA GPU -> the triton provider, bf16 and the fused "
                     "end-to-end step are skipped (reasons listed at the end)")
    load = _load_average()
    if DEVICE.type != "cuda" and load is not None and load > (os.cpu_count() or 1):
        lines.append(f"casd benchmarks: WARNING the CPU is busy (load {load:.1f} on {os.cpu_count()} "
                     "cores): CPU timings will be noisy; --bench-threads 1 helps")
    profile_dir = config.getoption("--bench-profile-dir")
    if profile_dir:
        lines.append(f"casd benchmarks: torch.profiler traces -> {profile_dir}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The launches/syncs table (benchmarks/test_bench_counts.py), after pytest-benchmark's tables."""
    try:
        from benchmarks.test_bench_counts import RESULTS, counts_table
    except ImportError:
        return
    if not RESULTS:
        return
    mode = "compiled on CUDA" if DEVICE.type == "cuda" else "through Triton's CPU interpreter (counts are the same)"
    terminalreporter.write_sep("-", "casd: device operations / Triton launches / host syncs per call")
    terminalreporter.write_line(f"(fused kernels {mode}; OpCounter, kernels/op_count.py)")
    for line in counts_table(RESULTS):
        terminalreporter.write_line(line)
