"""The fused CASD training step under torch.compile(fullgraph=True) and inside a CUDA graph.

    python -m benchmarks.step_check [--config target] [--backend inductor] [--out FILE.json]

One forward + backward of ``CASDObjective(backend="triton")`` on ``CASDModel``, built from
the public constructors, three ways:

1. eager;
2. ``torch.compile(step, fullgraph=True)`` (any graph break fails): the same losses and
   parameter gradients as eager for the same seed (Inductor's own RNG replaced by PyTorch's,
   ``fallback_random``, so the sampler's key and Gamma draws are the same numbers);
3. captured once in a CUDA graph and replayed (GPU only): two replays must draw different
   noise (the sampler's key is drawn on the device inside the graph, so each replay draws a
   new one) and give finite losses.

Prints what it checked and the time per step of each way (CUDA events; fp32, no optimizer),
writes the same as JSON with ``--out``, and exits 1 if a check fails. Without a GPU it runs
parts 1 and 2 on the smoke config (the kernels through Triton's interpreter) and says that
part 3 needs a GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.repo_imports import ensure_casd_importable

ensure_casd_importable()

import torch  # noqa: E402

from benchmarks.cases import E2E_CONFIGS  # noqa: E402
from benchmarks.test_bench_e2e import make_views  # noqa: E402
from casd.model import CASDModel, ModelConfig  # noqa: E402
from casd.objective import CASDObjective, ObjectiveConfig  # noqa: E402


def build(config, device):
    torch.manual_seed(0)
    model_config = ModelConfig(feature_dims=config.feature_dims, hidden=config.hidden,
                               embed_dim=config.embed_dim, dropout=0.0)
    model = CASDModel(model_config).to(device).train()
    objective = CASDObjective(ObjectiveConfig(num_samples=config.num_samples, backend="triton"))
    return model, objective


def grads_of(model):
    return [p.grad.detach().clone() if p.grad is not None else None for p in model.parameters()]


def time_ms(fn, device, repeats=10) -> float:
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeats
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / repeats


def check_compile(model, objective, views, backend, device) -> dict:
    teacher, student = views

    def forward(teacher, student):  # compiled; the backward runs through AOTAutograd's graph
        losses = objective(model, teacher, student)
        return losses.total, losses.distillation

    def run(fn):
        torch.manual_seed(123)
        model.zero_grad(set_to_none=True)
        total, distillation = fn(teacher, student)
        total.backward()
        return (total.detach(), distillation.detach()), grads_of(model)

    torch._inductor.config.fallback_random = True
    eager = run(forward)
    compiled_forward = torch.compile(forward, backend=backend, fullgraph=True)
    started = time.perf_counter()
    compiled = run(compiled_forward)
    compile_s = time.perf_counter() - started
    losses_close = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(compiled[0], eager[0]))
    grads_close = all(
        (a is None and b is None) or torch.allclose(a, b, rtol=1e-3, atol=1e-5 * (1 + float(b.abs().max())))
        for a, b in zip(compiled[1], eager[1])
    )
    result = {
        "backend": backend,
        "fullgraph": True,
        "first_call_s": compile_s,
        "losses_eager": [float(x) for x in eager[0]],
        "losses_compiled": [float(x) for x in compiled[0]],
        "losses_match": losses_close,
        "grads_match": grads_close,
        "eager_ms": time_ms(lambda: run(forward), device, 5),
        "compiled_ms": time_ms(lambda: run(compiled_forward), device, 5),
    }
    torch._inductor.config.fallback_random = False
    return result


def check_cuda_graph(model, objective, views, device) -> dict:
    """Capture forward + backward (PyTorch's whole-network capture recipe) and replay it."""
    teacher, student = views
    held = {}
    hook = objective.sampler.register_forward_hook(lambda module, args, out: held.__setitem__("samples", out))

    def step():
        losses = objective(model, teacher, student)
        losses.total.backward()
        return losses.total

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total = step()
    hook.remove()
    samples = held["samples"]
    replays = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize(device)
        replays.append((float(total), samples.detach().clone()))
    (loss_a, samples_a), (loss_b, samples_b) = replays
    differ = float((samples_a != samples_b).float().mean())
    return {
        "replays": 2,
        "losses": [loss_a, loss_b],
        "losses_finite": all(map(lambda x: x == x and abs(x) != float("inf"), (loss_a, loss_b))),
        "fraction_of_samples_that_differ": differ,
        "noise_differs": differ > 0.99,
        "graph_ms": time_ms(graph.replay, device, 20),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The fused CASD step under torch.compile and in a CUDA graph.")
    parser.add_argument("--config", default=None, choices=sorted(E2E_CONFIGS),
                        help="end-to-end configuration (default: target on a GPU, smoke on the CPU)")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default: inductor on a GPU, "
                        "aot_eager on the CPU, where Inductor's C++ compile of the whole step takes minutes)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = E2E_CONFIGS[args.config or ("target" if device.type == "cuda" else "smoke")]
    backend = args.backend or ("inductor" if device.type == "cuda" else "aot_eager")
    model, objective = build(config, device)
    views = make_views(config, device, seed=0)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "config": config.name, "compile": None, "cuda_graph": None}
    import triton

    results["triton"] = triton.__version__
    results["compile"] = check_compile(model, objective, views, backend, device)
    ok = results["compile"]["losses_match"] and results["compile"]["grads_match"]
    if device.type == "cuda":
        results["cuda_graph"] = check_cuda_graph(model, objective, views, device)
        graph = results["cuda_graph"]
        ok = ok and graph["noise_differs"] and graph["losses_finite"]
    else:
        results["cuda_graph"] = "skipped: CUDA graphs need a GPU"
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print("step_check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
