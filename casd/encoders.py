"""Per-modality temporal encoders (formulation §2.1): projection, masked Transformer, masked mean pool."""
from __future__ import annotations

import math

import torch
from torch import nn

from casd.modalities import MODALITIES
from casd.vocab import ENCODERS

__all__ = ["ModalityEncoder", "ModalityEncoders", "length_mask", "masked_mean", "log_frame_scale"]


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] valid lengths -> [B, L] bool, True on valid frames."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, L, H] over valid frames; rows with no valid frame give 0."""
    weights = valid.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def sinusoidal_positions(length: int, width: int, device: torch.device) -> torch.Tensor:
    """Fixed sinusoidal position codes [L, H]; no maximum length to configure."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    codes = torch.zeros(length, width, device=device)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return codes


def log_frame_scale(x: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """log(RMS over features + floor) of each frame [B, L, F] -> [B, L, 1] (formulation §2.1).

    The per-frame LayerNorm divides every frame by its own spread, which is exactly the
    reliability cue a noisy frame carries: on the synthetic data the raw frame RMS tracks the
    planted noise scale with Spearman 0.999, and after the LayerNorm every frame has RMS 1.
    Fed beside the normalised frame, it lets the encoder see how loud, hence how reliable, each
    frame is, and that a frame is zero (dropped): log(floor). The floor keeps zero frames finite.
    """
    return torch.log(x.float().square().mean(-1, keepdim=True).sqrt() + floor).to(x.dtype)


class ModalityEncoder(nn.Module):
    """Feature sequence [B, L, F] with valid lengths [B] -> utterance vector h [B, H].

    ``frame_scale=True`` appends ``log_frame_scale`` to each LayerNorm-ed frame before the
    projection (formulation §2.1), so the scale the LayerNorm removes reaches the encoder.

    ``kind="linear"`` (the easy-encoder variant): h = W [mean raw valid frame, mean log frame
    scale] + b. No normalisation hides the noise scale and no attention reweights frames, so on
    the non-turning synthetic data h is a linear function of the sufficient statistics.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int, heads: int, dropout: float,
                 frame_scale: bool = False, kind: str = "transformer"):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
        self.frame_scale = frame_scale
        self.kind = kind
        if kind == "linear":
            self.project = nn.Linear(in_dim + int(frame_scale), hidden)
            return
        self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim + int(frame_scale), hidden))
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            dim_feedforward=2 * hidden,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor=False: nested tensors would drop padded frames and change shapes.
        self.temporal = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = length_mask(lengths, x.shape[1])
        if self.kind == "linear":
            frames = torch.cat([x, log_frame_scale(x)], dim=-1) if self.frame_scale else x
            return self.project(masked_mean(frames, valid))
        # A row with no valid frame would make attention softmax over nothing (NaN): let it
        # attend to its first (padding) frame; pooling below still returns 0 for it.
        attend = valid.clone()
        attend[:, 0] |= ~valid.any(dim=1)
        if self.frame_scale:
            h = self.project[1](torch.cat([self.project[0](x), log_frame_scale(x)], dim=-1))
        else:
            h = self.project(x)
        h = h + sinusoidal_positions(x.shape[1], self.project[1].out_features, x.device)
        h = self.temporal(h, src_key_padding_mask=~attend)
        return self.norm(masked_mean(h, valid))


class ModalityEncoders(nn.ModuleList):
    """One ``ModalityEncoder`` per modality: batch dict -> [B, 3, H], one vector per modality.

    A ModuleList, so its parameters keep the names ``encoders.<m>.*`` in checkpoints.
    """

    def __init__(self, feature_dims: tuple[int, ...], hidden: int, layers: int, heads: int, dropout: float,
                 frame_scale: bool = False, kind: str = "transformer"):
        super().__init__(ModalityEncoder(dim, hidden, layers, heads, dropout, frame_scale, kind)
                         for dim in feature_dims)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(
            [enc(batch[name], batch[f"{name}_lengths"]) for name, enc in zip(MODALITIES, self)], dim=1
        )
