"""Training on several processes with PyTorch's own engine (DistributedDataParallel).

``torchrun --nproc_per_node=N -m casd.train ...`` starts N processes; each one calls
:func:`init_distributed`, which joins the process group (NCCL on GPUs, gloo on CPUs) from the
environment torchrun sets. The design goal is that N processes compute what one process
computes at the same *global* batch, up to float rounding, so results do not depend on N:

- ``--batch-size`` is the global batch. Every rank draws the same shuffled global batch and
  the same training missingness for all of its rows (same generators, same order), then keeps
  its own contiguous shard of rows (:meth:`DistContext.shard`).
- Reparameterisation noise is keyed by (epoch seed, view, sample index), not by rank or batch
  position (:class:`RowKeyedSampler`), so a sample gets the same draws on whichever rank holds it.
- Every loss is a mean over rows. A rank holding n_r of the B rows scales its local mean by
  n_r * N / B; DDP then averages gradients over ranks, which gives exactly the gradient of the
  global-batch mean, also when the shards are uneven (:func:`loss_scale`).
- The distillation row weights w_b = B softmax_b(-ubar^T_b / tau) are a global-batch quantity:
  :class:`GlobalBatchDistillation` rescales each rank's L_cd so that w is the softmax over the
  whole global batch, as in one process (one all_gather of two numbers per rank and step).
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

from casd.kernels import StudentTMixture
from casd.layers import ConsistencyDistillationLoss, StudentTSampler

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "loss_scale", "row_keys",
           "RowKeyedSampler", "GlobalBatchDistillation"]


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
            raise ValueError(f"--device {device_name}: under torchrun each rank uses cuda:<LOCAL_RANK>; "
                             "pass --device cuda (or auto)")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
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


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (SplitMix64 finaliser): nearby keys give unrelated seeds."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        return x ^ (x >> np.uint64(31))


def row_keys(epoch_seed: int, view: int, sample_index: torch.Tensor | np.ndarray) -> list[int]:
    """One 63-bit generator seed per sample: a function of (epoch seed, view, sample index) only."""
    index = np.asarray(sample_index.cpu() if torch.is_tensor(sample_index) else sample_index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= 2**25):
        raise ValueError(f"sample indices must lie in [0, 2**25), got [{index.min()}, {index.max()}]")
    index = index.astype(np.uint64)
    key = (np.uint64(epoch_seed) << np.uint64(26)) ^ (np.uint64(view) << np.uint64(25)) ^ index
    return [int(k) >> 1 for k in _splitmix64(key)]


class RowKeyedSampler(StudentTSampler):
    """``StudentTSampler`` whose draws for row b come from the key ``row_keys[b]`` alone.

    The draws of a row depend on its key and its own parameters only, never on which other
    rows share the batch, so a sample gets the same noise in a 1-process and an N-process run.
    The caller sets ``row_keys`` (one int per row of the 2B batch) before every forward; the
    keyed sampling itself is ``StudentTSampler.forward(mixture, row_keys)``.
    """

    def __init__(self, num_samples: int, backend: str = "torch"):
        super().__init__(num_samples, backend)
        self.row_keys: list[int] | None = None

    def forward(self, mixture: StudentTMixture) -> torch.Tensor:
        rows = mixture.mu.shape[0]
        keys, self.row_keys = self.row_keys, None  # one use per step: a stale key is an error
        if keys is None or len(keys) != rows:
            raise RuntimeError(f"RowKeyedSampler needs {rows} row keys set before the forward, "
                               f"got {None if keys is None else len(keys)}")
        keys = torch.tensor(keys, dtype=torch.int64).to(mixture.mu.device, non_blocking=True)
        return super().forward(mixture, row_keys=keys)


class GlobalBatchDistillation(ConsistencyDistillationLoss):
    """L_cd with the row weights w_b = B softmax_b(-ubar^T_b / tau) taken over the global batch.

    The parent computes w over this rank's n rows. For a row of this rank the two differ by one
    per-rank factor, (B / n) * exp(lse_local - lse_global) with lse = logsumexp(-ubar / tau), so
    the local loss is rescaled by it. With one process the factor is exactly 1 and not applied.
    """

    def __init__(self, tau: float = 1.0, backend: str = "torch", context: DistContext = DistContext()):
        super().__init__(tau, backend)
        self.context = context

    def forward(self, teacher: StudentTMixture, student: StudentTMixture, teacher_samples: torch.Tensor) -> torch.Tensor:
        loss = super().forward(teacher, student, teacher_samples)
        if not self.context.enabled:
            return loss
        ubar = teacher.detach().mean_uncertainty().float()
        local = torch.stack([torch.logsumexp(-ubar / self.tau, dim=0),
                             torch.tensor(float(ubar.shape[0]), device=ubar.device)])
        gathered = self.context.all_gather(local)  # [N, 2]: (lse, rows) per rank
        lse_global, rows_global = torch.logsumexp(gathered[:, 0], dim=0), gathered[:, 1].sum()
        return loss * (rows_global / ubar.shape[0]) * torch.exp(local[0] - lse_global)
