"""Torch side of the data: a `Split` as tensors, batched as a dict.

A batch is a dict with keys `BATCH_KEYS`: text [B, Lt, Ft] float32, text_lengths int64 [B],
audio, audio_lengths, vision, vision_lengths likewise, present bool [B, 3], labels float32 [B]
(regression) or int64 [B] (classes), index int64 [B] (row in the split, to match `split.ids`).
`SplitDataset` converts the split once; single items collate with `default_collate`, and
`make_loader` fetches whole batches by tensor indexing instead (one gather per key per batch).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from casd.data.mmsa import Split
from casd.modalities import MODALITIES

BATCH_KEYS: tuple[str, ...] = ("text", "text_lengths", "audio", "audio_lengths", "vision",
                               "vision_lengths", "present", "labels", "index")


def _present(present: np.ndarray | torch.Tensor | None, n: int) -> torch.Tensor:
    if present is None:
        return torch.ones(n, len(MODALITIES), dtype=torch.bool)
    present = torch.as_tensor(np.asarray(present) if not torch.is_tensor(present) else present)
    if present.shape != (n, len(MODALITIES)):
        raise ValueError(f"present must be [{n}, {len(MODALITIES)}], got {list(present.shape)}")
    if not present.bool().any(dim=1).all():
        raise ValueError("present must keep at least one modality per sample")
    return present.bool().cpu()


class SplitDataset(Dataset):
    """A `Split` as CPU tensors (`.tensors`, the whole split as one batch dict).

    `dataset[i]` is one sample's dict (collates with `default_collate`); `dataset[indices]`
    with a list / 1-D tensor of rows is already a batch dict.
    """

    def __init__(self, split: Split, present: np.ndarray | torch.Tensor | None = None):
        n = split.num_samples
        self.tensors: dict[str, torch.Tensor] = {}
        for name in MODALITIES:
            self.tensors[name] = torch.from_numpy(np.ascontiguousarray(getattr(split, name), np.float32))
            self.tensors[f"{name}_lengths"] = torch.from_numpy(
                np.asarray(getattr(split, f"{name}_lengths"), dtype=np.int64))
        self.tensors["present"] = _present(present, n)
        self.tensors["labels"] = torch.from_numpy(np.ascontiguousarray(split.labels))
        self.tensors["index"] = torch.arange(n, dtype=torch.int64)

    def __len__(self) -> int:
        return self.tensors["index"].shape[0]

    def __getitem__(self, index: int | list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(index, (int, np.integer)):
            index = torch.as_tensor(index, dtype=torch.int64)
        return {key: value[index] for key, value in self.tensors.items()}


def batches_from_split(split: Split, present: np.ndarray | torch.Tensor | None = None) -> SplitDataset:
    """The split as a TensorDataset-like `SplitDataset` (`.tensors` holds the full batch dict)."""
    return SplitDataset(split, present)


def make_loader(split: Split | SplitDataset, batch_size: int, shuffle: bool,
                generator: torch.Generator | None = None,
                present: np.ndarray | torch.Tensor | None = None,
                sampler: Sampler[int] | Iterable[int] | None = None,
                num_workers: int = 0) -> DataLoader:
    """Batches of `BATCH_KEYS` dicts; `generator` makes shuffling reproducible.

    Pass a ready `SplitDataset` to avoid converting the split again each epoch (then `present`
    must be None: it is part of the dataset).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(split, SplitDataset):
        if present is not None:
            raise ValueError("present is fixed when the SplitDataset is built; pass it there")
        dataset = split
    else:
        dataset = SplitDataset(split, present)
    if sampler is not None and shuffle:
        raise ValueError("shuffle must be False when a sampler is given")
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    # batch_size=None: each item the loader fetches is a list of rows -> one batch dict.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      collate_fn=_as_batch, num_workers=num_workers)


def _as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def batch_to(batch: dict[str, torch.Tensor], device: torch.device | str,
             non_blocking: bool = False) -> dict[str, torch.Tensor]:
    """A new dict with every tensor moved to `device`."""
    return {key: value.to(device, non_blocking=non_blocking) for key, value in batch.items()}
