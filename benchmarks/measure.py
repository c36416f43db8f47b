"""Measurement helpers shared by the benchmarks: shapes, ideal bytes, timing, memory, bandwidth, NVML.

Everything here is plain functions and small classes with explicit arguments; the pytest
fixtures in ``conftest.py`` decide when each runs (the copy bandwidth and NVML once per session).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "Shape",
    "dtype_name",
    "DTYPES",
    "synchronize",
    "ideal_bytes",
    "cuda_event_ms",
    "wall_ms",
    "peak_memory_bytes",
    "copy_bandwidth_gbps",
    "cache_bytes",
    "NvmlReader",
    "rounds_for",
    "median_ms",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


@dataclass(frozen=True)
class Shape:
    """B rows, K components, S samples per component, D dimensions; P = K * S points per row."""

    B: int
    K: int
    S: int
    D: int

    @property
    def P(self) -> int:
        return self.K * self.S

    @property
    def id(self) -> str:
        return f"B{self.B}-K{self.K}-S{self.S}-D{self.D}"

    def as_dict(self) -> dict[str, int]:
        return {"B": self.B, "K": self.K, "S": self.S, "D": self.D, "P": self.P}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- ideal bytes ---------------------------------------------------------------------------
# The fewest bytes one pass must move through device memory: every input read once, every
# output written once. ``big`` is the element size of the O(B*P*D) and O(B*K*D) tensors
# (z, mu, log_sigma, gradients of those); the O(B*K), O(B*P) and O(B) tensors (nu, log_pi,
# omega, w, Gamma scales) and all densities/losses are fp32 (4 bytes).

def _mixture_bytes(s: Shape, big: int) -> int:
    """mu, log_sigma [B,K,D] + nu, log_pi [B,K]."""
    return 2 * s.B * s.K * s.D * big + 2 * s.B * s.K * 4


def ideal_bytes(op: str, shape: Shape, big: int, backward: bool) -> int:
    """Bytes of the forward pass, plus those of an ideal single-pass backward if ``backward``."""
    s = shape
    points = s.B * s.P * s.D * big  # z [B,P,D]
    if op == "mixture_logpdf":
        forward = points + _mixture_bytes(s, big) + s.B * s.P * 4  # writes log p [B,P]
        # Backward: re-read the inputs, the saved log p and its gradient; write a gradient per input.
        backward_bytes = (points + _mixture_bytes(s, big)) * 2 + 2 * s.B * s.P * 4
    elif op == "student_t_rsample":
        samples = s.B * s.K * s.S * s.D * big  # z [B,K,S,D]
        scales = s.B * s.K * s.S * 4  # w [B,K,S]
        forward = 2 * s.B * s.K * s.D * big + scales + samples
        # Backward: read dz, log_sigma, w (eps is regenerated); write dmu, dlog_sigma, dw.
        backward_bytes = samples + s.B * s.K * s.D * big + scales + 2 * s.B * s.K * s.D * big + scales
    elif op == "consistency_distillation":
        weights = s.B * s.P * 4 + s.B * 4  # omega [B,P], w [B]
        forward = points + 2 * _mixture_bytes(s, big) + weights + s.B * 4  # writes [B] row terms
        # Backward: the student's gradient needs z, the student mixture and the weights; it
        # writes one gradient per student parameter.
        backward_bytes = points + _mixture_bytes(s, big) + weights + _mixture_bytes(s, big)
    else:
        raise ValueError(f"unknown op {op!r}")
    return forward + (backward_bytes if backward else 0)


# --- timing ----------------------------------------------------------------------------------

def cuda_event_ms(call: Callable[[int], object], calls: int, repeats: int = 3) -> float:
    """Device time per call in ms: CUDA events around ``calls`` back-to-back calls, median of repeats.

    ``call(i)`` launches work for input set i without synchronising; the events measure GPU
    time, so launch latency is hidden whenever the GPU is the bottleneck.
    """
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            call(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def wall_ms(call: Callable[[int], object], device: torch.device, calls: int, repeats: int = 3) -> float:
    """Wall time per call in ms, synchronised; median of repeats (the CPU's 'device time')."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for i in range(calls):
            call(i)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(times)


def peak_memory_bytes(call: Callable[[], object], device: torch.device) -> int | None:
    """Extra GPU memory one call needs at its peak, above what was allocated before it.

    ``torch.cuda.max_memory_allocated`` after a reset, minus the allocation at the start:
    the op's workspace, saved activations and outputs, not its (already resident) inputs.
    None on the CPU, where PyTorch keeps no such counter.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def cache_bytes(device: torch.device) -> int:
    """Size of the last-level cache that repeated runs could hide in (GPU L2); 0 on the CPU."""
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 50 * 2**20))


def copy_bandwidth_gbps(device: torch.device, nbytes: int | None = None, repeats: int = 10) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written, 1 GB = 1e9 B).

    The ceiling that the ops' achieved bandwidth is compared against. The buffer is far
    larger than any cache (1 GiB on a GPU, 256 MiB on the CPU).
    """
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 2**28
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    copy = lambda i: dst.copy_(src)  # noqa: E731
    per_copy_ms = cuda_event_ms(copy, repeats) if device.type == "cuda" else wall_ms(copy, device, repeats)
    return 2 * nbytes / (per_copy_ms * 1e-3) / 1e9


# --- NVML ------------------------------------------------------------------------------------

class NvmlReader:
    """Readings from NVIDIA's management library through nvidia-ml-py (``import pynvml``).

    Optional: without the package, a driver or a GPU, ``available`` is False, ``reason``
    says why, and every reading is an empty dict. Each query is guarded on its own, since
    drivers and boards drop support for some (power, energy) while the rest still work.
    """

    def __init__(self, device: torch.device):
        self.available = False
        self.reason = ""
        self._nvml = None
        self._handle = None
        if device.type != "cuda":
            self.reason = "no CUDA device"
            return
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py, or the 'bench' extra)"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses: no driver, no library
            self.reason = f"nvmlInit failed: {exc}"
            return
        self._nvml = pynvml
        self._handle = self._find_handle(device)
        if self._handle is None:
            self.reason = "could not find the NVML handle of the CUDA device"
            return
        self.available = True

    def _find_handle(self, device: torch.device):
        """Match the CUDA device by UUID (CUDA_VISIBLE_DEVICES renumbers devices), else by index."""
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        if uuid is not None:
            handle = self._query(self._nvml.nvmlDeviceGetHandleByUUID, f"GPU-{uuid}".encode())
            if handle is not None:
                return handle
        index = device.index if device.index is not None else torch.cuda.current_device()
        return self._query(self._nvml.nvmlDeviceGetHandleByIndex, index)

    def _query(self, fn, *args):
        try:
            return fn(*args)
        except Exception:  # NVMLError_NotSupported, _NoPermission, _FunctionNotFound, ...
            return None

    @staticmethod
    def _text(value) -> str | None:
        return value.decode() if isinstance(value, bytes) else value

    def static_info(self) -> dict:
        """Device name, driver version and CUDA driver version, once per session."""
        if not self.available:
            return {}
        nvml, h = self._nvml, self._handle
        info = {
            "nvml_device_name": self._text(self._query(nvml.nvmlDeviceGetName, h)),
            "nvml_driver_version": self._text(self._query(nvml.nvmlSystemGetDriverVersion)),
            "nvml_cuda_driver_version": self._query(nvml.nvmlSystemGetCudaDriverVersion),
            "nvml_power_limit_w": _scaled(self._query(nvml.nvmlDeviceGetEnforcedPowerLimit, h), 1e-3),
        }
        return {k: v for k, v in info.items() if v is not None}

    def snapshot(self) -> dict:
        """Memory used, utilisation, power, temperature, SM clock and the energy counter, now."""
        if not self.available:
            return {}
        nvml, h = self._nvml, self._handle
        memory = self._query(nvml.nvmlDeviceGetMemoryInfo, h)
        rates = self._query(nvml.nvmlDeviceGetUtilizationRates, h)
        reading = {
            "nvml_memory_used_bytes": getattr(memory, "used", None),
            "nvml_gpu_util_pct": getattr(rates, "gpu", None),
            "nvml_memory_util_pct": getattr(rates, "memory", None),
            "nvml_power_w": _scaled(self._query(nvml.nvmlDeviceGetPowerUsage, h), 1e-3),
            "nvml_temperature_c": self._query(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
            "nvml_sm_clock_mhz": self._query(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
            # Total energy since the driver loaded, in mJ (Volta and newer).
            "nvml_energy_mj": self._query(nvml.nvmlDeviceGetTotalEnergyConsumption, h),
        }
        return {k: v for k, v in reading.items() if v is not None}

    def shutdown(self) -> None:
        if self.available:
            self._query(self._nvml.nvmlShutdown)
            self.available = False


def _scaled(value, factor: float) -> float | None:
    return None if value is None else value * factor


def rounds_for(budget_s: float, per_call_ms: float, minimum: int = 5, maximum: int = 500) -> int:
    """How many timed rounds fit into ``budget_s`` given one call's time."""
    if per_call_ms <= 0 or math.isnan(per_call_ms):
        return minimum
    return max(minimum, min(maximum, int(budget_s * 1e3 / per_call_ms)))


def median_ms(benchmark, fallback_ms: float) -> float:
    """pytest-benchmark's median in ms; ``fallback_ms`` under --benchmark-disable (no stats)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median * 1e3 if stats else fallback_ms
