"""The packed layout of per-row gradients, shared by the distillation kernel and its custom op.

The fused consistency-distillation forward computes d per_row[b] / d theta_b for the
student's four parameters and keeps them in one buffer [B, K, packed_width(D)], per (b, k):

    [ d/dmu (D values) | d/dlog_sigma (D values) | d/dnu | d/dlog_pi | padding ]

so that the backward is a single multiplication by grad_per_row[b]. The width is rounded up
to a multiple of 16 elements so that every (b, k) block starts 64-byte aligned (vector
stores). Triton-free: the custom op's fake implementation needs the shape too.
"""
from __future__ import annotations

import torch

__all__ = ["packed_width", "unpack_gradients"]


def packed_width(dim: int) -> int:
    """2D + 2 rounded up to a multiple of 16."""
    return -(-(2 * dim + 2) // 16) * 16


def unpack_gradients(packed: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    """(d/dmu, d/dlog_sigma, d/dnu, d/dlog_pi) as views of a packed [..., packed_width(D)] buffer."""
    return packed[..., :dim], packed[..., dim:2 * dim], packed[..., 2 * dim], packed[..., 2 * dim + 1]
