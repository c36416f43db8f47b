"""Device operations, Triton launches and host syncs per call: the fused ops against the references.

Counted with ``casd.kernels.op_count.OpCounter`` (ATen ops that touch data, Triton launches,
host reads of tensor data). The counts do not depend on the shape or the device, so they
are taken at a small shape on whatever this machine is (the fused kernels through Triton's
interpreter without a GPU) and printed as a table at the end of
``pytest benchmarks/ --benchmark-only``; the JSON keeps them (kind "counts") for
``python -m benchmarks.report``. The rows: each op forward and backward, and one whole CASD
training step (objective forward and backward) with the reference and the fused backend.
"""
from __future__ import annotations

import pytest
import torch

from casd.kernels.op_count import OpCounter, OpCounts

from benchmarks.cases import E2E_CONFIGS, OPS
from benchmarks.measure import Shape
from benchmarks.report import counts_table  # noqa: F401  (the table conftest.py prints)
from benchmarks.test_bench_ops import REFERENCES, fused, make_inputs

COUNT_SHAPE = Shape(B=8, K=7, S=4, D=128)  # the target's K, S, D; counts do not depend on B
RESULTS: list[dict] = []  # rows for the terminal summary (conftest.py)


def _row(what: str, provider: str, direction: str, counts: OpCounts) -> dict:
    return dict(what=what, provider=provider, direction=direction, device_ops=counts.device_ops,
                triton_launches=counts.triton_launches, host_syncs=counts.host_syncs,
                ops=dict(counts.ops), syncs=dict(counts.syncs))


def count_op(op: str, provider: str, device: torch.device) -> list[dict]:
    inputs = make_inputs(op, COUNT_SHAPE, torch.float32, device, seed=0, backward=True)
    fn = REFERENCES[op] if provider == "reference" else fused(op, device)
    fn(*inputs.args)  # warm: the first fused call loads the kernels
    with OpCounter() as forward:
        out = fn(*inputs.args)
    out = out[0] if isinstance(out, tuple) else out
    cotangent = torch.randn_like(out)  # made outside the count (autograd would fill ones itself)
    with OpCounter() as backward:
        torch.autograd.grad(out, [inputs.args[i] for i in inputs.grad_args], cotangent)
    return [_row(op, provider, "forward", forward), _row(op, provider, "backward", backward)]


def count_step(provider: str, device: torch.device) -> list[dict]:
    from benchmarks.test_bench_e2e import BACKENDS, TrainStep

    step = TrainStep(E2E_CONFIGS["smoke"], BACKENDS[provider], device)
    teacher, student = step.batches[0]
    step.objective(step.model, teacher, student).total.backward()  # warm
    with OpCounter() as forward:
        losses = step.objective(step.model, teacher, student)
    with OpCounter() as backward:
        losses.total.backward()
    return [_row("CASD training step (smoke config)", provider, "forward", forward),
            _row("CASD training step (smoke config)", provider, "backward", backward)]


@pytest.mark.parametrize("what", [*OPS, "train_step"])
@pytest.mark.parametrize("provider", ["reference", "fused"])
def test_counts(benchmark, bench_env, what, provider):
    device = bench_env.device
    if provider == "fused" and bench_env.triton_reason and device.type == "cuda":
        pytest.skip(bench_env.triton_reason)
    if what == "train_step":
        rows = count_step("reference" if provider == "reference" else "fused", device)
    else:
        rows = count_op(what, provider, device)
    benchmark.group = "counts"
    benchmark.pedantic(lambda: None, rounds=1)  # collected under --benchmark-only; times nothing
    benchmark.extra_info.update(kind="counts", device=str(device), rows=rows,
                                triton_mode="interpreter" if device.type != "cuda" else "compiled")
    RESULTS.extend(rows)
