"""The three fused operations, five providers side by side, forward and forward + backward:
the reference eagerly (``eager``) and under torch.compile (``compile``); the fused op
eagerly (``triton``), under torch.compile(fullgraph=True) (``triton-compile``) and replayed
from a captured CUDA graph (``triton-graph``, GPU only).

Every provider gets the same inputs and computes the same thing. The references come from
``casd.kernels.reference``; the fused providers call the public entry points with
``backend="triton"`` (their input checks read only metadata: no sync, nothing to exclude).

Per case, ``extra_info`` holds: the first call's time (compile or JIT included), the device
time per call (CUDA events over back-to-back calls), the ideal single-pass bytes and the
achieved fraction of the measured copy bandwidth, the peak extra memory, and NVML readings.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from casd.kernels import (
    confidence_log_weights,
    consistency_distillation,
    consistency_distillation_reference,
    gamma_scales,
    mixture_logpdf,
    mixture_logpdf_reference,
    mixture_uncertainty,
    row_weights,
    student_t_rsample,
    student_t_rsample_reference,
    uncertainty,
)
from casd.modalities import MODALITIES, NUM_COMPONENTS, component_availability

from benchmarks.cases import OpCase
from benchmarks.measure import (
    DTYPES,
    Shape,
    cuda_event_ms,
    ideal_bytes,
    median_ms,
    peak_memory_bytes,
    rounds_for,
    synchronize,
)

RSAMPLE_SEED = 1234
DEVICE_TIMING_REPEATS = 3  # CUDA-event measurements per case; their median is device_ms


# --- inputs --------------------------------------------------------------------------------

@dataclass
class OpInputs:
    """One set of positional arguments; ``grad_args`` index the ones that receive gradients."""

    args: tuple[torch.Tensor, ...]
    grad_args: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.args)


def _mixture(shape: Shape, dtype: torch.dtype, device, gen, keep: float):
    """A plausible mixture: modality-level missingness (each modality present with prob. ``keep``,
    at least one) decides the available components; log pi are the confidence weights."""
    if shape.K != NUM_COMPONENTS:
        raise ValueError(f"the benchmark mixtures have K = {NUM_COMPONENTS} components, got {shape.K}")
    B, K, D = shape.B, shape.K, shape.D
    mu = torch.randn(B, K, D, generator=gen, device=device)
    log_sigma = (0.3 * torch.randn(B, K, D, generator=gen, device=device)).clamp(-2.0, 1.0)
    nu = 2.5 + 20.0 * torch.rand(B, K, generator=gen, device=device)
    present = torch.rand(B, len(MODALITIES), generator=gen, device=device) < keep
    present[~present.any(dim=1), 0] = True
    log_pi = confidence_log_weights(uncertainty(nu, log_sigma), component_availability(present))
    return mu.to(dtype), log_sigma.to(dtype), nu, log_pi


def _points(mu, log_sigma, nu, samples: int, gen) -> torch.Tensor:
    """S draws from every component, flattened to points z [B, K*S, D] (as the objective does)."""
    B, K, D = mu.shape
    eps = torch.randn(B, K, samples, D, generator=gen, device=mu.device)
    z = student_t_rsample_reference(mu.float(), log_sigma.float(), gamma_scales(nu, samples), eps)
    return z.reshape(B, K * samples, D).to(mu.dtype)


def make_inputs(op: str, shape: Shape, dtype: torch.dtype, device, seed: int, backward: bool) -> OpInputs:
    gen = torch.Generator(device=device).manual_seed(seed)
    if op == "mixture_logpdf":
        mixture = _mixture(shape, dtype, device, gen, keep=0.8)
        args, grad_args = (_points(*mixture[:3], shape.S, gen), *mixture), (0, 1, 2, 3, 4)
    elif op == "student_t_rsample":
        mu, log_sigma, nu, _ = _mixture(shape, dtype, device, gen, keep=0.8)
        args, grad_args = (mu, log_sigma, gamma_scales(nu, shape.S)), (0, 1, 2)
    elif op == "consistency_distillation":
        teacher = _mixture(shape, dtype, device, gen, keep=1.0)
        student = _mixture(shape, dtype, device, gen, keep=0.6)
        z = _points(*teacher[:3], shape.S, gen)
        omega = (teacher[3].exp() / shape.S).repeat_interleave(shape.S, dim=1)
        w = row_weights(mixture_uncertainty(teacher[3], uncertainty(teacher[2], teacher[1].float())))
        args, grad_args = (z, *teacher, *student, omega, w), (5, 6, 7, 8)  # student parameters
    else:
        raise ValueError(f"unknown op {op!r}")
    args = tuple(t.detach().contiguous() for t in args)
    if backward:
        for i in grad_args:
            args[i].requires_grad_(True)
    return OpInputs(args, grad_args)


# --- providers -----------------------------------------------------------------------------
# Flat positional signatures, one per op, shared by all providers.

def _rsample_reference(mu, log_sigma, w):
    """The reference sampler including its noise draw (the fused kernel draws eps itself)."""
    B, K, D = mu.shape
    eps = torch.randn(B, K, w.shape[-1], D, device=mu.device, dtype=mu.dtype)
    return student_t_rsample_reference(mu, log_sigma, w, eps)


def _cd_reference(z, t_mu, t_ls, t_nu, t_lp, s_mu, s_ls, s_nu, s_lp, omega, w):
    return consistency_distillation_reference(z, (t_mu, t_ls, t_nu, t_lp), (s_mu, s_ls, s_nu, s_lp), omega, w)


REFERENCES: dict[str, Callable] = {
    "mixture_logpdf": mixture_logpdf_reference,
    "student_t_rsample": _rsample_reference,
    "consistency_distillation": _cd_reference,
}


def fused(op: str, device: torch.device) -> Callable:
    """The public op with backend="triton", in the flat signature of its reference."""
    if op == "mixture_logpdf":
        return lambda *args: mixture_logpdf(*args, backend="triton")
    if op == "student_t_rsample":
        key = torch.tensor(RSAMPLE_SEED, device=device)  # a device tensor: no fill per call, graph-safe
        return lambda mu, log_sigma, scales: student_t_rsample(mu, log_sigma, scales, key, backend="triton")
    return lambda z, tm, tl, tn, tp, sm, sl, sn, sp, omega, w: consistency_distillation(
        z, (tm, tl, tn, tp), (sm, sl, sn, sp), omega, w, backend="triton"
    )


def provider_fn(case: OpCase, device: torch.device) -> Callable:
    if case.provider == "eager":
        return REFERENCES[case.op]
    # A fresh Dynamo state per compiled case: no recompile limit is hit across the sweep, and
    # the first call below measures this graph's whole compile.
    if case.provider == "compile":
        torch._dynamo.reset()
        return torch.compile(REFERENCES[case.op])
    if case.provider == "triton-compile":
        torch._dynamo.reset()
        return torch.compile(fused(case.op, device), fullgraph=True)
    return fused(case.op, device)  # "triton", and "triton-graph" before its capture


@dataclass
class OpRunner:
    """Runs one provider on input set ``i % len(sets)``: forward under no_grad, or forward and
    ``torch.autograd.grad`` with a fixed random cotangent (nothing accumulates between calls)."""

    fn: Callable
    sets: list[OpInputs]
    backward: bool
    cotangents: dict[int, torch.Tensor | None] = field(default_factory=dict)

    def __call__(self, i: int) -> None:
        index = i % len(self.sets)
        inputs = self.sets[index]
        if not self.backward:
            with torch.no_grad():
                self.fn(*inputs.args)
            return
        out = self.fn(*inputs.args)
        out = out[0] if isinstance(out, tuple) else out  # consistency_distillation: (loss, rows)
        if index not in self.cotangents:
            self.cotangents[index] = torch.randn_like(out) if out.dim() > 0 else None
        torch.autograd.grad(out, [inputs.args[j] for j in inputs.grad_args], self.cotangents[index])


# --- the benchmark ---------------------------------------------------------------------------

@dataclass
class GraphRunner:
    """An ``OpRunner`` call on input set 0, captured once into a CUDA graph and replayed: the
    launch overhead of everything in the call is gone, only device work remains."""

    inner: OpRunner
    graph: torch.cuda.CUDAGraph | None = None

    def capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture stream, as CUDA graphs require
            for _ in range(3):
                self.inner(0)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.inner(0)

    def __call__(self, i: int) -> None:
        if self.graph is None:
            self.capture()
        self.graph.replay()


def _skip_reason(case: OpCase, env) -> str | None:
    if case.provider.startswith("triton") and env.triton_reason:
        return env.triton_reason
    if case.provider == "triton-graph" and env.device.type != "cuda":
        return "CUDA graphs need a GPU"
    if case.dtype == "bf16" and env.device.type != "cuda":
        return "bf16 is measured on a GPU only (CPU bf16 timings say nothing about the GPU path)"
    return None


def test_op(benchmark, op_case: OpCase, bench_env):
    case, env, device = op_case, bench_env, bench_env.device
    reason = _skip_reason(case, env)
    if reason:
        pytest.skip(reason)
    backward = case.mode == "fwd+bwd"
    dtype = DTYPES[case.dtype]

    try:
        first = make_inputs(case.op, case.shape, dtype, device, seed=0, backward=backward)
        n_sets = env.input_sets(first.nbytes)
        sets = [first] + [make_inputs(case.op, case.shape, dtype, device, s, backward) for s in range(1, n_sets)]
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of GPU memory building the inputs of {case.shape.id} {case.dtype}")
    if case.provider.endswith("compile"):
        env.compile_startup()
    runner = OpRunner(provider_fn(case, device), sets, backward)
    if case.provider == "triton-graph":
        runner = GraphRunner(runner)

    # First call: compile (torch.compile) or JIT (Triton) included; reported, never timed.
    synchronize(device)
    started = time.perf_counter()
    try:
        runner(0)
        synchronize(device)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of GPU memory running {case.provider} at {case.shape.id} {case.dtype}")
    except Exception as exc:
        if case.provider != "compile":  # the fused op must compile; a failure is a bug
            raise
        pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {str(exc)[:200]}")
    first_call_s = time.perf_counter() - started
    for i in range(1, n_sets + 1):  # warm-up: every set once (cotangents), the allocator settled
        runner(i)
    synchronize(device)

    # pytest-benchmark's measurement: wall time of one call, synchronised inside.
    counter = itertools.count()

    def one_call() -> None:
        runner(next(counter))
        synchronize(device)

    probe_ms = _probe_ms(one_call)
    benchmark.group = case.group
    benchmark.pedantic(one_call, rounds=rounds_for(env.budget_s, probe_ms))
    wall_median_ms = median_ms(benchmark, probe_ms)

    # Device time (GPU: CUDA events over back-to-back calls; CPU: the wall time above).
    nvml_before = env.nvml.snapshot()
    window_start = time.perf_counter()
    if device.type == "cuda":
        calls = rounds_for(env.budget_s / 2, wall_median_ms, minimum=3)
        device_ms = cuda_event_ms(runner, calls, DEVICE_TIMING_REPEATS)
    else:
        calls, device_ms = 0, wall_median_ms
    window_s = time.perf_counter() - window_start
    nvml_after = env.nvml.snapshot()

    peak = peak_memory_bytes(lambda: runner(0), device)
    moved = ideal_bytes(case.op, case.shape, dtype.itemsize, backward)
    achieved_gbps = moved / (device_ms * 1e-3) / 1e9
    benchmark.extra_info.update(
        kind="op",
        op=case.op,
        mode=case.mode,
        provider=case.provider,
        dtype=case.dtype,
        **case.shape.as_dict(),
        device=str(device),
        triton_mode="interpreter" if env.interpret else "compiled",
        input_sets=n_sets,
        first_call_s=first_call_s,
        compile_s=max(0.0, first_call_s - wall_median_ms * 1e-3) if case.provider != "eager" else None,
        inductor_startup_s=env.inductor_startup_s if case.provider.endswith("compile") else None,
        device_ms=device_ms,
        device_ms_source="cuda_events" if device.type == "cuda" else "wall_median",
        ideal_bytes=moved,
        achieved_gbps=achieved_gbps,
        copy_gbps=env.copy_gbps,
        bandwidth_fraction=achieved_gbps / env.copy_gbps,
        peak_extra_bytes=peak,
        **nvml_after,
        **_energy_per_call(nvml_before, nvml_after, calls * DEVICE_TIMING_REPEATS, window_s),
    )


def _probe_ms(one_call: Callable[[], None], calls: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        one_call()
    return (time.perf_counter() - started) * 1e3 / calls


def _energy_per_call(before: dict, after: dict, calls: int, window_s: float) -> dict:
    """Energy per call from NVML's cumulative counter over the device-timing window (its
    resolution is coarse: trust it only when the window lasts about a second or more)."""
    if calls == 0 or "nvml_energy_mj" not in before or "nvml_energy_mj" not in after:
        return {}
    return {
        "nvml_energy_mj_per_call": (after["nvml_energy_mj"] - before["nvml_energy_mj"]) / calls,
        "nvml_energy_window_s": window_s,
    }
