"""Count what a piece of PyTorch code asks of the device: operations, Triton launches, host syncs.

A fused operation earns its keep only if the code around its kernel stays small: on a GPU
every extra launch costs a few microseconds of launch latency, and every host
synchronisation drains the queue and leaves the GPU idle until the host catches up. Both
are invisible in a CPU-only run, so they are counted here, on any device:

- **device operations**: every ATen operation that does work on tensor data, seen through a
  ``TorchDispatchMode``; views (outputs that alias an input), allocations (``empty*``) and
  the host reads below are not operations. A ``casd::`` custom op is not counted itself but
  looked into (``custom_ops.IMPLEMENTATIONS``): the ATen operations inside its
  implementation are counted like any others.
- **Triton launches**: every ``kernel[grid](...)`` of a ``@triton.jit`` function, compiled or
  interpreted (each one is also a device operation).
- **host syncs**: every read of tensor data by the host — ``.item()``, ``bool(t)``,
  ``.tolist()``, ``.numpy()``, data-dependent output shapes (``nonzero``, ``masked_select``,
  ``unique``, ...), copies from a GPU to the CPU. On a GPU each one blocks until the queue
  drains; on the CPU they are what would block there.

    with OpCounter() as counts:
        loss = fused_op(...)
    print(counts)  # OpCounts(device_ops=1, triton_launches=1, host_syncs=0, ops={...})

Counting runs the code normally (results unchanged) and costs only Python overhead per op.
"""
from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounts", "OpCounter"]

# Operations that allocate memory without touching it.
_ALLOCATIONS = frozenset(
    {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted", "lift_fresh"}
)
# Operations whose output size depends on tensor values: the host must wait for the data.
_DATA_DEPENDENT = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
     "unique_consecutive", "is_nonzero", "equal", "allclose", "item"}
)


@dataclass
class OpCounts:
    """What the counted code did. ``ops`` maps each counted name (ATen or Triton) to its count."""

    device_ops: int = 0
    triton_launches: int = 0
    host_syncs: int = 0
    ops: collections.Counter = field(default_factory=collections.Counter)
    syncs: collections.Counter = field(default_factory=collections.Counter)
    # Inside a launch: Triton's interpreter moves tensors with ATen calls of its own, which
    # are part of the launch, not operations of the counted code.
    in_launch: bool = field(default=False, repr=False)

    def add_op(self, name: str) -> None:
        self.device_ops += 1
        self.ops[name] += 1

    def add_sync(self, name: str) -> None:
        self.host_syncs += 1
        self.syncs[name] += 1

    def __str__(self) -> str:
        ops = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in self.ops.items())
        syncs = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in self.syncs.items())
        return (f"{self.device_ops} device ops ({self.triton_launches} Triton launches), "
                f"{self.host_syncs} host syncs [ops: {ops or '-'}; syncs: {syncs or '-'}]")


def _is_view(func) -> bool:
    """Whether the op's outputs alias its inputs without writing them (view, expand, ...)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _returns_no_tensor(func) -> bool:
    """Metadata queries (promote_types, ...) return no tensor and do nothing on the device."""
    return not any("Tensor" in str(r.type) for r in func._schema.returns)


def _reads_to_host(name: str, args, kwargs) -> bool:
    """Whether the host must wait for tensor data: data-dependent shapes, GPU-to-CPU copies."""
    if name in _DATA_DEPENDENT:
        return True
    if name == "copy_":  # copy_(dst, src)
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    if name == "_to_copy":
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    return False


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: OpCounts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.counts.in_launch:
            return func(*args, **kwargs)
        namespace, _, name = func._schema.name.partition("::")
        if namespace == "casd":  # look inside our own custom ops: run their implementation here
            from .custom_ops import IMPLEMENTATIONS

            with self:
                return IMPLEMENTATIONS[func._schema.name](*args, **kwargs)
        if _reads_to_host(name, args, kwargs):
            self.counts.add_sync(name)
        elif not (name in _ALLOCATIONS or _is_view(func) or _returns_no_tensor(func)):
            self.counts.add_op(f"aten.{name}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def _counting_triton_launches(counts: OpCounts):
    """Count ``kernel[grid](...)`` of any Triton kernel, compiled (JITFunction) or interpreted."""
    patched = []
    try:
        from triton.runtime.jit import JITFunction

        patched.append(JITFunction)
    except ImportError:  # pragma: no cover - triton is a dependency
        pass
    try:
        from triton.runtime.interpreter import InterpretedFunction

        patched.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    originals = {cls: cls.run for cls in patched}

    def counting(original):
        def run(self, *args, **kwargs):
            if kwargs.get("warmup", False) or counts.in_launch:
                return original(self, *args, **kwargs)
            counts.triton_launches += 1
            counts.add_op(f"triton.{getattr(self, '__name__', None) or self.fn.__name__}")
            counts.in_launch = True
            try:
                return original(self, *args, **kwargs)
            finally:
                counts.in_launch = False

        return run

    for cls in patched:
        cls.run = counting(originals[cls])
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.run = original


@contextlib.contextmanager
def _counting_host_reads(counts: OpCounts):
    """``.tolist()`` and ``.numpy()`` of a CPU tensor never reach the dispatcher: count them here."""
    originals = {"tolist": torch.Tensor.tolist, "numpy": torch.Tensor.numpy}

    def counting(name, original):
        def read(self, *args, **kwargs):
            counts.add_sync(name)
            return original(self, *args, **kwargs)

        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


class OpCounter:
    """Context manager: ``with OpCounter() as counts: ...`` fills an ``OpCounts``."""

    def __init__(self) -> None:
        self.counts = OpCounts()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> OpCounts:
        self._stack.enter_context(_counting_triton_launches(self.counts))
        self._stack.enter_context(_counting_host_reads(self.counts))
        self._stack.enter_context(_DispatchCounter(self.counts))
        return self.counts

    def __exit__(self, *exc) -> None:
        self._stack.close()
