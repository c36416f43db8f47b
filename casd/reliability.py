"""Input reliability: per-modality statistics of what the inputs hold, and the log σ shift they give.

Why (formulation §2.3, §4 "Held-out calibration of u"): the uncertainty has to predict the
errors a model makes on data it never fitted. The network's own log σ head is trained on
memorised training errors, and refitting its few thousand weights on the 300 validation samples
overfits. What makes an input unreliable is largely visible in a handful of statistics of the
inputs themselves: how many of a modality's valid frames carry data, and how loud they are (the
scale the per-frame LayerNorm removes; §2.1). A linear map of those statistics, one per
component (3 weights per member modality and a bias: 43 in all), can be fit on held-out data
without memorising it.

    r_m = (n_m / L_m,  mean over kept frames of log(RMS(x_t) + 10⁻³),  n_m^(−1/2))

for modality m with L_m valid frames, n_m of which are kept (not all zero); r_m = 0 when no
frame is kept (a dropped modality). Component k's shift is

    δ_k(x) = b_k + Σ_{m ∈ k} w_km · r_m,

added to every coordinate of its log σ (so u_k, the entropy per dimension, moves by exactly δ_k
before clamping). The weights start at zero and are fit only by the held-out calibration
(casd.calibration, ``fit="reliability"``): during training they are frozen at zero, so training is
exactly as without them.
"""
from __future__ import annotations

import torch
from torch import nn

from casd.encoders import length_mask, log_frame_scale
from casd.modalities import MODALITIES, NUM_COMPONENTS, combination_membership

__all__ = ["NUM_STATISTICS", "input_statistics", "ReliabilityShift"]

NUM_STATISTICS = 3  # kept fraction, mean log frame scale, n^(-1/2)


def input_statistics(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 3, NUM_STATISTICS] float32: r_m for each modality (module docstring), 0 where nothing is kept."""
    rows = []
    for name in MODALITIES:
        x = batch[name].float()
        lengths = batch[f"{name}_lengths"]
        kept = length_mask(lengths, x.shape[1]) & (x != 0).any(dim=-1)  # dropped frames are all zero
        count = kept.sum(dim=1).float()
        fraction = count / lengths.clamp_min(1).float()
        loudness = (log_frame_scale(x).squeeze(-1) * kept).sum(dim=1) / count.clamp_min(1.0)  # 0 if none kept
        sparsity = torch.where(count > 0, count.clamp_min(1.0).rsqrt(), torch.zeros_like(count))
        rows.append(torch.stack([fraction, loudness, sparsity], dim=-1))
    return torch.stack(rows, dim=1)


class ReliabilityShift(nn.Module):
    """δ [B, K] from ``input_statistics``: δ_k = b_k + Σ_{m∈k} w_km · r_m (module docstring).

    Zero-initialised and frozen (``requires_grad=False``): the held-out calibration unfreezes it.
    A state dict written before the shift existed loads as zero shift, which is what that model ran.
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(NUM_COMPONENTS, len(MODALITIES), NUM_STATISTICS), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(NUM_COMPONENTS), requires_grad=False)
        # Which statistics a component may use: only those of its own modalities.
        self.register_buffer("membership", combination_membership().unsqueeze(-1), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        statistics = input_statistics(batch)
        return self.bias + torch.einsum("bms,kms->bk", statistics, self.weight * self.membership)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, parameter in self.named_parameters(recurse=False):
            state_dict.setdefault(prefix + name, torch.zeros_like(parameter))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
