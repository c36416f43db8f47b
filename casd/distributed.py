"""Training on several processes with PyTorch's own engine (DistributedDataParallel).

``torchrun --nproc_per_node=N -m casd.train ...`` starts N processes; each one calls
:func:`init_distributed`, which joins the process group (NCCL on GPUs, gloo on CPUs) from the
environment torchrun sets. The design goal is that N processes compute what one process
computes at the same *global* batch, up to float rounding, so results do not depend on N:

- ``--batch-size`` is the global batch. Every rank draws the same shuffled global batch and
  the same training missingness for all of its rows (same generators, same order), then keeps
  its own contiguous shard of rows (:meth:`DistContext.shard`).
- Reparameterisation noise is keyed by (epoch seed, view, sample index), not by rank or batch
  position (``--noise sample``: casd.sampler), so a sample gets the same draws on whichever rank
  holds it.
- Every loss is a mean over rows. A rank holding n_r of the B rows scales its local mean by
  n_r * N / B; DDP then averages gradients over ranks, which gives exactly the gradient of the
  global-batch mean, also when the shards are uneven (:func:`loss_scale`).
- The distillation row weights w_b = B softmax_b(-ubar^T_b / tau) are a global-batch quantity:
  casd.distillation.GlobalBatchDistillation rescales each rank's L_cd so that w is the softmax
  over the whole global batch, as in one process (one all_gather of two numbers per rank and step).
- Dropout masks are drawn from torch's generator seeded per (epoch, rank): independent across
  ranks and samples, but not the masks one process would draw. Runs compared with a
  single-process run (tests/test_distributed.py) use dropout 0.
- Validation and test predictions are computed on row shards and gathered to every rank, so
  every rank sees the same metrics and takes the same early-stopping decision. Only rank 0
  logs and writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from casd.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "loss_scale"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_sizes(self, rows: int) -> list[int]:
        """Near-equal contiguous shards of ``rows`` rows: the first rows % N ranks get one more."""
        base, extra = divmod(rows, self.world_size)
        return [base + (r < extra) for r in range(self.world_size)]

    def shard(self, rows: int) -> slice:
        """This rank's contiguous rows of a global batch (or split) of ``rows`` rows."""
        sizes = self.shard_sizes(rows)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[*shape] from every rank -> [N, *shape] (equal shapes on all ranks)."""
        if not self.enabled:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Concatenate per-rank row shards of numpy arrays, in rank order, on every rank.

        A rank with an empty shard passes ``{}``.
        """
        if not self.enabled:
            return arrays
        parts: list[dict[str, np.ndarray] | None] = [None] * self.world_size
        dist.all_gather_object(parts, arrays)
        nonempty = [p for p in parts if p]
        return {key: np.concatenate([p[key] for p in nonempty]) for key in nonempty[0]}

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str = "auto") -> tuple[DistContext, str]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1).

    Returns the context and the device name this rank should use: ``cuda:<LOCAL_RANK>`` for
    GPU runs (NCCL), the requested CPU device otherwise (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        if ":" in device_name:
            raise ConfigError(f"--device {device_name}: under torchrun each rank uses cuda:<LOCAL_RANK>; "
                             "pass --device cuda (or auto)")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible "
                              "(torchrun --nproc_per_node at most the number of GPUs)")
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank), device_name


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def loss_scale(local_rows: int, global_rows: int, context: DistContext) -> float:
    """Factor on a rank's row-mean loss so that DDP's gradient average is the global-batch mean."""
    return local_rows * context.world_size / global_rows
