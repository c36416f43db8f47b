"""End-to-end: CASD training steps per second, reference objective vs fused kernels.

One step is what ``casd.trainer`` does per batch: the objective on the teacher and student
views (one 2B batch), backward, gradient clipping, AdamW. bf16 autocast on a GPU, fp32 on
the CPU. Batches are random tensors of the real layout, built once per case.

With ``--bench-profile-dir DIR`` (or ``CASD_PROFILE_DIR=DIR``) each case also writes a
torch.profiler chrome trace of a few steps (open it in Perfetto or chrome://tracing) and the
top operators as text.
"""
from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from casd.model import CASDModel, ModelConfig
from casd.modalities import MODALITIES
from casd.objective import CASDObjective, ObjectiveConfig

from benchmarks.cases import E2EConfig, E2ECase
from benchmarks.measure import median_ms, peak_memory_bytes, rounds_for, synchronize

BACKENDS = {"reference": "torch", "fused": "triton"}
WARMUP_STEPS = 3
BATCHES = 2  # rotate two random batches


def make_views(config: E2EConfig, device: torch.device, seed: int) -> tuple[dict, dict]:
    """Random (teacher, student) batch dicts: every modality present in the teacher view; the
    student view drops each modality with probability 0.3, keeping at least one."""
    gen = torch.Generator(device=device).manual_seed(seed)
    B = config.batch
    teacher: dict[str, torch.Tensor] = {}
    for name, length, dim in zip(MODALITIES, config.seq_lens, config.feature_dims):
        teacher[name] = torch.randn(B, length, dim, generator=gen, device=device)
        teacher[f"{name}_lengths"] = torch.randint(max(1, length // 2), length + 1, (B,), generator=gen, device=device)
    teacher["present"] = torch.ones(B, len(MODALITIES), dtype=torch.bool, device=device)
    teacher["labels"] = 6.0 * torch.rand(B, generator=gen, device=device) - 3.0
    present = torch.rand(B, len(MODALITIES), generator=gen, device=device) > 0.3
    keep = torch.randint(0, len(MODALITIES), (B,), generator=gen, device=device)
    present[torch.arange(B, device=device), keep] |= ~present.any(dim=1)
    return teacher, {**teacher, "present": present}


class TrainStep:
    """One optimiser step of the CASD objective, as the trainer runs it."""

    def __init__(self, config: E2EConfig, backend: str, device: torch.device):
        torch.manual_seed(0)  # same initial weights for both providers
        self.model = CASDModel(
            ModelConfig(feature_dims=config.feature_dims, hidden=config.hidden, embed_dim=config.embed_dim)
        ).to(device)
        self.objective = CASDObjective(ObjectiveConfig(num_samples=config.num_samples, backend=backend))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        )
        self.batches = [make_views(config, device, seed) for seed in range(BATCHES)]
        self.model.train()

    def __call__(self, i: int) -> None:
        teacher, student = self.batches[i % len(self.batches)]
        with torch.profiler.record_function("casd.forward"), self.autocast:
            losses = self.objective(self.model, teacher, student)
        with torch.profiler.record_function("casd.backward"):
            losses.total.backward()
        with torch.profiler.record_function("casd.optimizer"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def _skip_reason(case: E2ECase, env) -> str | None:
    if case.provider != "fused":
        return None
    if env.device.type != "cuda" and not env.interpret:
        return ("fused end-to-end step needs a GPU: on the CPU the kernels run through Triton's "
                "interpreter, far too slow for a meaningful step time")
    return env.triton_reason


def test_train_step(benchmark, e2e_case: E2ECase, bench_env):
    case, env, device = e2e_case, bench_env, bench_env.device
    reason = _skip_reason(case, env)
    if reason:
        pytest.skip(reason)
    step = TrainStep(case.config, BACKENDS[case.provider], device)

    synchronize(device)
    started = time.perf_counter()
    try:
        step(0)
        synchronize(device)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of GPU memory for end-to-end config {case.config.name}")
    first_step_s = time.perf_counter() - started
    for i in range(1, WARMUP_STEPS):
        step(i)
    synchronize(device)

    counter = itertools.count()

    def one_step() -> None:
        step(next(counter))
        synchronize(device)

    probe_started = time.perf_counter()
    one_step()
    probe_ms = (time.perf_counter() - probe_started) * 1e3
    benchmark.group = case.group
    benchmark.pedantic(one_step, rounds=rounds_for(env.e2e_budget_s, probe_ms, minimum=5, maximum=200))
    median_s = median_ms(benchmark, probe_ms) * 1e-3

    peak = peak_memory_bytes(lambda: step(0), device)
    benchmark.extra_info.update(
        kind="e2e",
        provider=case.provider,
        backend=BACKENDS[case.provider],
        **case.config.as_dict(),
        rows_per_step=2 * case.config.batch,
        device=str(device),
        autocast="bf16" if device.type == "cuda" else "off",
        triton_mode="interpreter" if env.interpret else "compiled",
        first_step_s=first_step_s,
        steps_per_s=1.0 / median_s,
        samples_per_s=case.config.batch / median_s,
        peak_extra_bytes=peak,
        **env.nvml.snapshot(),
    )
    if env.profile_dir:
        benchmark.extra_info["profile_trace"] = write_profile(step, Path(env.profile_dir), case, device)


def write_profile(step: TrainStep, out_dir: Path, case: E2ECase, device: torch.device, active: int = 3) -> str:
    """A chrome trace of ``active`` training steps (after one skipped and one warm-up step),
    plus the top operators by self time as text; returns the trace's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"casd_train_{case.config.name}_{case.provider}_{device.type}"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def on_trace_ready(prof) -> None:
        prof.export_chrome_trace(f"{stem}.json")
        stem.with_suffix(".txt").write_text(prof.key_averages().table(sort_by=sort_by, row_limit=30))

    schedule = torch.profiler.schedule(wait=1, warmup=1, active=active, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=on_trace_ready) as prof:
        for i in range(2 + active):
            step(i)
            synchronize(device)
            prof.step()
    return f"{stem}.json"
