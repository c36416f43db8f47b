"""The objective's reparameterised sampler and its noise strategies (formulation §4, "Sampling").

``Sampler(num_samples, backend, noise)`` draws S samples per mixture component; the objective
builds it from its ``ObjectiveConfig``. The noise strategy (casd.vocab.NOISE_STRATEGIES)
decides where the randomness comes from:

- ``"batch"``: one seed per step from torch's default generator (which the trainer seeds per
  epoch and rank), so ``--fused`` draws eps inside the kernel and never stores it;
- ``"sample"``: row b's draws come from a generator seeded with ``row_keys[b]``, a hash of
  (epoch seed, view, sample index) (:func:`row_keys`). A sample then gets the same noise
  whichever batch, position or torchrun rank holds it, so N processes compute what one does.

This module only picks the strategy and forwards to the layers (casd.layers.StudentTSampler
and, for keyed rows, :class:`RowKeyedSampler`); the draws themselves are casd.kernels ops.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from casd.kernels import StudentTMixture, gamma_scales, student_t_rsample_with_noise
from casd.layers import StudentTSampler
from casd.vocab import NOISE_STRATEGIES

__all__ = ["Sampler", "RowKeyedSampler", "row_keys"]


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
    """``StudentTSampler`` whose noise for row b comes from a generator seeded with ``row_keys[b]``.

    The draws of a row depend on its key and its own parameters only, never on which other
    rows share the batch, so a sample gets the same noise in a 1-process and an N-process run.
    Gamma scales come from ``gamma_scales`` (torch's reparameterised gamma) with the device's
    default generator reseeded to the row's key, and restored afterwards.
    """

    def forward(self, mixture: StudentTMixture, row_keys: Sequence[int] | None = None) -> torch.Tensor:
        mu, log_sigma, nu = mixture.mu, mixture.log_sigma, mixture.nu
        rows, components, dim = mu.shape
        if row_keys is None or len(row_keys) != rows:
            raise ValueError(f"RowKeyedSampler needs row keys, one per row ({rows}), "
                             f"got {None if row_keys is None else len(row_keys)}")
        # Reseeding only this device's default generator costs ~1 us (torch.manual_seed ~100 us).
        generator = (torch.cuda.default_generators[mu.device.index or 0] if mu.device.type == "cuda"
                     else torch.default_generator)
        saved = generator.get_state()
        eps, scales = [], []
        try:
            for row, key in enumerate(row_keys):
                generator.manual_seed(key)
                # eps first: its stream use is fixed, so gamma's rejection loop cannot shift it.
                eps.append(torch.randn((1, components, self.num_samples, dim), device=mu.device, dtype=mu.dtype))
                scales.append(gamma_scales(nu[row:row + 1], self.num_samples))
        finally:
            generator.set_state(saved)  # the global stream (dropout, ...) is left untouched
        return student_t_rsample_with_noise(mu, log_sigma, torch.cat(scales), torch.cat(eps), backend=self.backend)


class Sampler(nn.Module):
    """S reparameterised draws per component, [B, K, D] mixture -> [B, K, S, D], by noise strategy.

    ``row_keys`` (one int per row, from :func:`row_keys`) is required by ``noise="sample"`` and
    refused by ``noise="batch"``, whose seed comes from torch's default generator.
    """

    def __init__(self, num_samples: int, backend: str = "torch", noise: str = "batch"):
        super().__init__()
        if noise not in NOISE_STRATEGIES:
            raise ValueError(f"noise must be one of {NOISE_STRATEGIES}, got {noise!r}")
        self.noise = noise
        self.draw = StudentTSampler(num_samples, backend) if noise == "batch" else RowKeyedSampler(num_samples, backend)

    @property
    def num_samples(self) -> int:
        return self.draw.num_samples

    @property
    def backend(self) -> str:
        return self.draw.backend

    def forward(self, mixture: StudentTMixture, row_keys: Sequence[int] | None = None) -> torch.Tensor:
        if self.noise == "sample":
            return self.draw(mixture, row_keys)
        if row_keys is not None:
            raise ValueError("row keys given, but this sampler's noise strategy is 'batch' (one seed per step)")
        return self.draw(mixture)
