"""Missing-modality protocols (formulation §1): fixed evaluation conditions and training-time views.

Evaluation (numpy, on a whole `Split`), the two standard protocols:

- frame-level, exactly MMSA's `generate_m` (TFR-Net / LNLN): for each modality a uniform
  draw per (sample, position) from `np.random.RandomState(seed_m)` (the same stream MMSA gets
  from `np.random.seed(seed_m); np.random.uniform(...)`), a valid position is kept iff
  `uniform > rate`; the text's first and last valid positions are always kept; dropped text
  features become 0 and dropped `text_bert` ids become [UNK] = 100 (mask row unchanged);
  dropped audio/vision frames become 0; lengths are unchanged.
- modality-level (MMIN / CMAD): a named combination of present modalities; absent ones are zeroed.

Training (torch, per batch, on the batch's device, from a `torch.Generator`): the student view
of `TrainingMissingness` draws a fresh missingness per sample; the input batch (the teacher
view) is never modified.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from casd.data.mmsa import Split
from casd.modalities import (COMBINATION_NAMES, MODALITIES, combination_membership,
                             component_availability, presence_from_name)

UNK_ID = 100  # BERT [UNK]: what MMSA writes into dropped text positions
FRAME_RATES: tuple[float, ...] = tuple(k / 10 for k in range(10))  # 0.0, 0.1, ..., 0.9
EVAL_PROTOCOLS = ("frame", "modality")
TRAIN_PROTOCOLS = ("frame", "modality", "mixed")


def _check_rate(rate: object, what: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{what} must be a real number in [0, 1], got {rate!r}")
    return float(rate)


def _check_seeds(seed: object) -> tuple[int, int, int]:
    """An int (one seed for all three modalities, as LNLN) or one seed per modality (as MMSA)."""
    seeds = (seed,) * 3 if isinstance(seed, numbers.Integral) else tuple(seed)
    if len(seeds) != 3 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                  and 0 <= s < 2**32 for s in seeds):
        raise ValueError(f"seed must be an int or three ints in [0, 2**32), got {seed!r}")
    return tuple(int(s) for s in seeds)


def _valid(lengths: np.ndarray, max_len: int) -> np.ndarray:
    return np.arange(max_len)[None, :] < lengths[:, None]


def _frame_keep(valid: np.ndarray, rate: float, seed: int) -> np.ndarray:
    return (np.random.RandomState(seed).uniform(size=valid.shape) > rate) & valid


def _text_mask(split: Split) -> np.ndarray:
    """[N, Lt] float: the `text_bert` mask row, or `t < text_lengths` without it."""
    if split.text_bert is not None:
        return split.text_bert[:, 1, :]
    return _valid(split.text_lengths, split.text.shape[1]).astype(np.float32)


def frame_keep_masks(split: Split, rate: float, seed: int | tuple[int, int, int]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames `frame_missing` keeps: bool [N, L_m] per modality, True on kept valid frames."""
    rate = _check_rate(rate)
    seeds = _check_seeds(seed)
    keep = _frame_keep(_text_mask(split) > 0, rate, seeds[0])
    rows = np.flatnonzero(split.text_lengths > 0)
    keep[rows, 0] = keep[rows, split.text_lengths[rows] - 1] = True  # [CLS] / [SEP] survive
    audio = _frame_keep(_valid(split.audio_lengths, split.audio.shape[1]), rate, seeds[1])
    vision = _frame_keep(_valid(split.vision_lengths, split.vision.shape[1]), rate, seeds[2])
    return keep, audio, vision


def frame_missing(split: Split, rate: float, seed: int | tuple[int, int, int]) -> Split:
    """Drop each valid frame of each modality with probability `rate` (MMSA `generate_m`)."""
    keep, audio_keep, vision_keep = frame_keep_masks(split, rate, seed)
    text = split.text * keep[..., None]
    text_bert = None
    if split.text_bert is not None:
        text_mask = _text_mask(split)
        text_bert = split.text_bert.copy()
        text_bert[:, 0, :] = keep * split.text_bert[:, 0, :] + UNK_ID * (text_mask - keep)
    audio = split.audio * audio_keep[..., None]
    vision = split.vision * vision_keep[..., None]
    return split.replace(text=text.astype(np.float32), text_bert=text_bert,
                         audio=audio.astype(np.float32), vision=vision.astype(np.float32))


def modality_missing(split: Split, combination_name: str) -> tuple[Split, np.ndarray]:
    """Keep only the modalities of `combination_name` ('t', ..., 'tav'); zero the others.

    Returns the split and `present` bool [N, 3]. Lengths are kept; absent text also gets
    [PAD] = 0 token ids (mask row unchanged), so nothing of it survives.
    """
    presence = presence_from_name(combination_name)
    changes = {}
    for m, name in enumerate(MODALITIES):
        if not presence[m]:
            changes[name] = np.zeros_like(getattr(split, name))
    if not presence[0] and split.text_bert is not None:
        text_bert = split.text_bert.copy()
        text_bert[:, 0, :] = 0
        changes["text_bert"] = text_bert
    present = np.tile(np.asarray(presence, dtype=bool), (split.num_samples, 1))
    return split.replace(**changes), present


@dataclass(frozen=True)
class EvalCondition:
    """One recorded test condition: a frame rate with its seeds, or a modality combination."""

    name: str
    protocol: str  # "frame" | "modality"
    rate: float | None = None  # frame protocol
    combination: str | None = None  # modality protocol, one of COMBINATION_NAMES
    seed: tuple[int, int, int] | None = None  # frame protocol: (text, audio, vision) seeds

    def __post_init__(self) -> None:
        if self.protocol == "frame":
            _check_rate(self.rate)
            object.__setattr__(self, "seed", _check_seeds(self.seed))
        elif self.protocol == "modality":
            presence_from_name(str(self.combination))  # raises on an unknown combination
        else:
            raise ValueError(f"unknown evaluation protocol {self.protocol!r}; choose one of {EVAL_PROTOCOLS}")


def evaluation_conditions(base_seed: int = 0) -> list[EvalCondition]:
    """The 17 test conditions: frame rates 0.0..0.9, then the 7 combinations in component order.

    Frame rate index k gets seeds (base_seed + 3k, base_seed + 3k + 1, base_seed + 3k + 2), one
    per modality, so the masks of different modalities and rates are independent.
    """
    conditions = [EvalCondition(f"frame_{rate:.1f}", "frame", rate=rate,
                                seed=tuple(base_seed + 3 * k + m for m in range(3)))
                  for k, rate in enumerate(FRAME_RATES)]
    conditions += [EvalCondition(f"modality_{name}", "modality", combination=name)
                   for name in COMBINATION_NAMES]
    return conditions


def apply_condition(split: Split, condition: EvalCondition) -> tuple[Split, np.ndarray]:
    """The split as seen under `condition`, with `present` bool [N, 3]."""
    if condition.protocol == "frame":
        present = np.ones((split.num_samples, len(MODALITIES)), dtype=bool)
        return frame_missing(split, condition.rate, condition.seed), present
    return modality_missing(split, condition.combination)


def condition_keep_masks(split: Split, condition: EvalCondition) -> tuple[np.ndarray, ...]:
    """Bool [N, L_m] per modality: the valid frames that carry data under `condition` (frames
    a frame condition drops and every frame of a modality a modality condition removes are
    False). What an observer of the degraded inputs can see, e.g. for the synthetic oracle."""
    if condition.protocol == "frame":
        return frame_keep_masks(split, condition.rate, condition.seed)
    presence = presence_from_name(condition.combination)
    valid = (_text_mask(split) > 0, _valid(split.audio_lengths, split.audio.shape[1]),
             _valid(split.vision_lengths, split.vision.shape[1]))
    return tuple(v & present for v, present in zip(valid, presence))


def draw_kept_modalities(present: torch.Tensor, drop_rate: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Drop each present modality with probability `drop_rate`, conditioned on keeping >= 1.

    Samples the kept subset directly from that conditional law over the 7 combinations
    (P(S) proportional to (1-p)^|S| p^(n_present - |S|) for S within the present set), so no
    rejection loop; at p = 1 the limit is a uniform single present modality.
    """
    present = present.bool()
    if not present.any(dim=1).all():
        raise ValueError("every sample needs at least one present modality")
    membership = combination_membership(present.device)  # [K, 3]
    size = membership.sum(dim=1)  # [K]
    available = component_availability(present)  # [B, K]: S within the present set
    if drop_rate >= 1.0:
        weights = (available & (size == 1)).float()
    else:
        dropped = (present.sum(dim=1, keepdim=True) - size).clamp(min=0)  # [B, K]
        weights = (1 - drop_rate) ** size * torch.pow(torch.full_like(dropped, drop_rate), dropped)
        weights = torch.where(available, weights, torch.zeros_like(weights))
    choice = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return membership[choice].bool()


@dataclass(frozen=True)
class TrainingMissingness:
    """Training-time student view: random missingness per sample (formulation §4).

    protocol "frame": per-sample rate r_b ~ U(0, rate), each valid frame dropped with prob r_b
    (text first/last kept); "modality": each present modality dropped with prob `rate`, at
    least one kept; "mixed": each sample gets one of the two, with probability 1/2.
    """

    protocol: str = "mixed"
    rate: float = 0.5

    def __post_init__(self) -> None:
        if self.protocol not in TRAIN_PROTOCOLS:
            raise ValueError(f"unknown training protocol {self.protocol!r}; choose one of {TRAIN_PROTOCOLS}")
        _check_rate(self.rate)

    def apply(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A new batch dict (the student view); `batch` itself is left untouched."""
        present = batch["present"].bool()
        batch_size, device = present.shape[0], present.device
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the batch is on {device}")
        if self.protocol == "mixed":
            use_frame = torch.rand(batch_size, generator=generator, device=device) < 0.5
        else:
            use_frame = torch.full((batch_size,), self.protocol == "frame", device=device)

        keep_present = present
        if self.protocol != "frame":
            kept = draw_kept_modalities(present, self.rate, generator)
            keep_present = torch.where(use_frame[:, None], present, kept)
        if self.protocol != "modality":
            rates = torch.rand(batch_size, generator=generator, device=device) * self.rate

        student = dict(batch)
        for m, name in enumerate(MODALITIES):
            x, lengths = batch[name], batch[f"{name}_lengths"]
            keep = keep_present[:, m, None].expand(-1, x.shape[1])
            if self.protocol != "modality":
                positions = torch.arange(x.shape[1], device=device)[None, :]
                drawn = torch.rand(x.shape[:2], generator=generator, device=device) > rates[:, None]
                if name == "text":  # [CLS] / [SEP] survive, as in the evaluation protocol
                    drawn |= (positions == 0) | (positions == lengths[:, None] - 1)
                frame_keep = keep & drawn & (positions < lengths[:, None])
                keep = torch.where(use_frame[:, None], frame_keep, keep)
            student[name] = x * keep[..., None].to(x.dtype)
        student["present"] = keep_present.clone()
        return student
