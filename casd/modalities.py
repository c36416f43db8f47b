"""The three modalities and the seven modality combinations (mixture components).

The component order is fixed by formulation §1-2: {t},{a},{v},{t,a},{t,v},{a,v},{t,a,v}. Data,
model and evaluation all index components through this one table.
"""
from __future__ import annotations

import torch

MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
TEXT, AUDIO, VISION = 0, 1, 2

COMBINATIONS: tuple[tuple[int, ...], ...] = (
    (TEXT,),
    (AUDIO,),
    (VISION,),
    (TEXT, AUDIO),
    (TEXT, VISION),
    (AUDIO, VISION),
    (TEXT, AUDIO, VISION),
)
COMBINATION_NAMES: tuple[str, ...] = tuple(
    "".join(MODALITIES[m][0] for m in combo) for combo in COMBINATIONS
)  # ("t", "a", "v", "ta", "tv", "av", "tav")
NUM_COMPONENTS = len(COMBINATIONS)


def combination_membership(device: torch.device | str | None = None) -> torch.Tensor:
    """[K, 3] float matrix: row c has a 1 for each modality in combination c."""
    membership = torch.zeros(NUM_COMPONENTS, len(MODALITIES), device=device)
    for c, combo in enumerate(COMBINATIONS):
        membership[c, list(combo)] = 1.0
    return membership


def component_availability(present: torch.Tensor) -> torch.Tensor:
    """[B, 3] bool modality presence -> [B, K] bool: a component needs all its modalities."""
    if present.dim() != 2 or present.shape[1] != len(MODALITIES):
        raise ValueError(f"present must be [B, {len(MODALITIES)}], got {list(present.shape)}")
    membership = combination_membership(present.device).bool()  # [K, 3]
    missing_needed = membership.unsqueeze(0) & ~present.bool().unsqueeze(1)  # [B, K, 3]
    return ~missing_needed.any(dim=-1)


def presence_from_name(name: str) -> tuple[bool, bool, bool]:
    """'ta' -> (True, True, False): the modalities present under a named combination."""
    if name not in COMBINATION_NAMES:
        raise ValueError(f"unknown modality combination {name!r}; choose one of {COMBINATION_NAMES}")
    return tuple(m[0] in name for m in MODALITIES)
