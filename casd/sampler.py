"""The objective's reparameterised sampler and its noise strategies (formulation §4, "Sampling").

``Sampler(num_samples, backend, noise)`` draws S samples per mixture component; the objective
builds it from its ``ObjectiveConfig``. The noise strategy (casd.vocab.NOISE_STRATEGIES)
decides where the randomness comes from:

- ``"batch"``: one 64-bit key per step, drawn on the device from torch's default generator
  (which the trainer seeds per epoch and rank);
- ``"sample"``: row b's draws come from the key ``row_keys[b]``, a hash of (epoch seed, view,
  sample index) (:func:`row_keys`). A sample then gets the same noise whichever batch,
  position or torchrun rank holds it, so N processes compute what one does.

Either way casd.layers.StudentTSampler draws for the whole batch at once (with ``--fused``
inside the kernels, eps never stored); this module only makes the keys and picks the strategy.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from casd.kernels import StudentTMixture
from casd.layers import StudentTSampler
from casd.vocab import NOISE_STRATEGIES

__all__ = ["Sampler", "row_keys"]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (SplitMix64 finaliser): nearby keys give unrelated seeds."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        return x ^ (x >> np.uint64(31))


def row_keys(epoch_seed: int, view: int, sample_index: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One 63-bit key per sample (int64 [n], on the CPU): a function of (epoch seed, view, sample index) only."""
    index = np.asarray(sample_index.cpu() if torch.is_tensor(sample_index) else sample_index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= 2**25):
        raise ValueError(f"sample indices must lie in [0, 2**25), got [{index.min()}, {index.max()}]")
    index = index.astype(np.uint64)
    key = (np.uint64(epoch_seed) << np.uint64(26)) ^ (np.uint64(view) << np.uint64(25)) ^ index
    return torch.from_numpy((_splitmix64(key) >> np.uint64(1)).astype(np.int64))


class Sampler(nn.Module):
    """S reparameterised draws per component, [B, K, D] mixture -> [B, K, S, D], by noise strategy.

    ``row_keys`` (int64, one per row, from :func:`row_keys`) is required by ``noise="sample"``
    and refused by ``noise="batch"``, whose key comes from torch's default generator.
    """

    def __init__(self, num_samples: int, backend: str = "torch", noise: str = "batch"):
        super().__init__()
        if noise not in NOISE_STRATEGIES:
            raise ValueError(f"noise must be one of {NOISE_STRATEGIES}, got {noise!r}")
        self.noise = noise
        self.draw = StudentTSampler(num_samples, backend)

    @property
    def num_samples(self) -> int:
        return self.draw.num_samples

    @property
    def backend(self) -> str:
        return self.draw.backend

    def forward(self, mixture: StudentTMixture, row_keys: torch.Tensor | None = None) -> torch.Tensor:
        rows = mixture.mu.shape[0]
        if self.noise == "batch":
            if row_keys is not None:
                raise ValueError("row keys given, but this sampler's noise strategy is 'batch' (one key per step)")
            return self.draw(mixture)
        if row_keys is None or row_keys.shape != (rows,):
            raise ValueError(f"noise='sample' needs row keys, one per row ({rows}), "
                             f"got {None if row_keys is None else list(row_keys.shape)}")
        return self.draw(mixture, row_keys.to(mixture.mu.device, non_blocking=True))
