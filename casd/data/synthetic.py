"""A seeded synthetic data set in MMSA format, with planted structure (formulation §6).

Generative story (equations in docs/data.md). Per sample i:

- latent sentiment s_i ~ N(0, label_scale^2); the label is the mean of `annotators` integer
  ratings round(clip(s_i + e_ij, -3, 3)), e_ij ~ N(0, annotator_noise^2): MOSI-like values in
  [-3, 3] on a 1/annotators grid, with some exact zeros;
- per modality m a noise scale sigma_im = noise_m * min(G_im^(-1/2), max_noise_scale),
  G_im ~ Gamma(noise_dof/2, rate noise_dof/2): a Student-t scale mixture, so some modalities of
  some samples are unreliable, independently across modalities;
- frames t < l_im (a per-sample length), relative position tau in (0, 1):
  x_imt = signal_m * s_i * (cos(pi tau) u_m + sin(pi tau) v_m) + b_speaker,m + sigma_im * eps_imt.
  The sentiment direction turns over the utterance, so it is spread over frames (per-frame
  SNR is low) and mean pooling keeps only its sin part, which a per-speaker offset b confounds;
  the text's first and last valid positions are [CLS]/[SEP] vectors with no signal.

The result is a raw MMSA dict (train/valid/test with every key of formulation §6), so it goes
through the same `split_from_mmsa` path as real files. Two synthetic-only keys ride along for
analysis: `latent_sentiment` [N] and `noise_scale` [N, 3] (sigma_im); loaders ignore them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casd.cli import CommandParser, run_command
from casd.data.mmsa import SPLITS
from casd.errors import ConfigError
from casd.outputs import atomic_write, check_writable_file

PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 100, 101, 102
VOCAB_SIZE = 30522  # bert-base-uncased, so the ids look like the real ones


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator; the defaults make a CPU-sized MOSI look-alike."""

    seed: int = 0
    num_train: int = 1200
    num_valid: int = 300
    num_test: int = 500
    text_len: int = 32  # max lengths (padded L) per modality
    audio_len: int = 40
    vision_len: int = 40
    min_len_fraction: float = 0.4  # shortest valid length as a fraction of L
    text_dim: int = 64
    audio_dim: int = 16
    vision_dim: int = 24
    signal: tuple[float, float, float] = (1.0, 0.5, 0.4)  # text, audio, vision strength
    noise: tuple[float, float, float] = (2.0, 2.0, 2.0)  # typical per-frame noise std
    noise_dof: float = 2.0  # Student-t degrees of freedom of the per-sample noise scale
    max_noise_scale: float = 10.0  # cap on G^(-1/2), keeps features finite and bounded
    speaker_scale: float = 0.3  # std of the per-speaker feature offset (nuisance)
    clips_per_speaker: float = 12.0  # mean clips per speaker; splits are speaker-disjoint
    label_scale: float = 1.5  # std of the latent sentiment
    annotators: int = 5
    annotator_noise: float = 0.6
    neg_inf_fraction: float = 0.02  # samples with one -inf audio entry, as in real files
    # False: the easy-encoder variant (issue 11). The sentiment direction stays u_m on every frame
    # instead of turning to v_m, so a linear readout of the pooled frames (``--encoder linear``)
    # can reach the oracle; the random streams are the same as the default data's.
    turning: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.turning, bool):
            raise ValueError(f"turning must be a bool, got {self.turning!r}")
        if self.seed < 0:  # numpy's SeedSequence takes non-negative seeds only
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for f in dataclasses.fields(self):  # NaN would pass every range check below
            value = getattr(self, f.name)
            if not all(np.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))):
                raise ValueError(f"{f.name} must be finite, got {value}")
        for name in ("num_train", "num_valid", "num_test", "audio_len", "vision_len",
                     "audio_dim", "vision_dim", "annotators"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.text_len < 3:
            raise ValueError(f"text_len must be >= 3 ([CLS] word [SEP]), got {self.text_len}")
        if min(self.text_dim, self.audio_dim, self.vision_dim) < 2:
            raise ValueError("feature dims must be >= 2 (the sentiment pattern spans two directions)")
        for name in ("min_len_fraction", "neg_inf_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("signal", "noise"):
            if len(getattr(self, name)) != 3 or min(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be three non-negative floats, got {getattr(self, name)}")
        for name in ("noise_dof", "max_noise_scale", "clips_per_speaker"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("speaker_scale", "label_scale", "annotator_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "valid": self.num_valid, "test": self.num_test}


@dataclass(frozen=True)
class PlantedStructure:
    """Data-set-wide constants: two orthonormal sentiment directions per modality, [CLS]/[SEP]."""

    directions: tuple[np.ndarray, ...]  # per modality [2, F]: rows u_m (cos part), v_m (sin part)
    cls: np.ndarray  # [Ft]
    sep: np.ndarray  # [Ft]


def _structure(config: SyntheticConfig, rng: np.random.Generator) -> PlantedStructure:
    directions = []
    for dim in (config.text_dim, config.audio_dim, config.vision_dim):
        q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
        directions.append(q.T.astype(np.float32))
    cls, sep = rng.standard_normal((2, config.text_dim)).astype(np.float32)
    return PlantedStructure(tuple(directions), cls, sep)


def _streams(config: SyntheticConfig) -> tuple[np.random.SeedSequence, list[np.random.SeedSequence]]:
    structure_seq, *split_seqs = np.random.SeedSequence(config.seed).spawn(1 + len(SPLITS))
    return structure_seq, split_seqs


def planted_structure(config: SyntheticConfig = SyntheticConfig()) -> PlantedStructure:
    """The directions and [CLS]/[SEP] vectors ``generate_synthetic(config)`` plants (for analysis:
    the oracle's posterior mean needs them); drawn from the same stream, so they match exactly."""
    return _structure(config, np.random.default_rng(_streams(config)[0]))


def _speakers(n: int, mean_clips: float, rng: np.random.Generator) -> np.ndarray:
    """Contiguous speaker index per sample, about `mean_clips` clips each."""
    sizes = 1 + rng.poisson(max(mean_clips - 1.0, 0.0), size=n)  # enough speakers for n clips
    return np.repeat(np.arange(n), sizes)[:n]


def _lengths(n: int, max_len: int, min_fraction: float, floor: int, rng) -> np.ndarray:
    low = min(max(floor, int(np.ceil(min_fraction * max_len))), max_len)
    return rng.integers(low, max_len + 1, size=n)


def signal_pattern(lengths: np.ndarray, max_len: int, inner: tuple[int, int] = (0, 0),
                   turning: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a, b) [N, L] of the sentiment pattern a u_m + b v_m on each frame (docs/data.md).

    `inner` = (skip at start, skip at end) valid positions that carry no signal (text [CLS]/[SEP]);
    tau = (t - first + 1/2) / span runs over the rest. Turning: (cos pi tau, sin pi tau), the
    direction turns from u_m to v_m, so the mean of the frames is not a sufficient statistic.
    Not turning (the easy-encoder variant): (1, 0) on every carrying frame, and a linear readout
    of the pooled frames is.
    """
    t = np.arange(max_len)[None, :]
    first, span = inner[0], np.maximum(lengths - inner[0] - inner[1], 1)[:, None]
    carries = (t >= first) & (t < first + span)
    if not turning:
        return carries.astype(np.float64), np.zeros(carries.shape)
    tau = (t - first + 0.5) / span  # (0, 1) over the signal-carrying positions
    return np.cos(np.pi * tau) * carries, np.sin(np.pi * tau) * carries


def _sequence(s, lengths, max_len, direction, signal, offset, sigma, rng, inner=(0, 0), turning=True):
    """[N, L, F] float32: the sentiment pattern (``signal_pattern``) + speaker offset + scaled noise."""
    n, dim = len(s), direction.shape[1]
    a, b = signal_pattern(lengths, max_len, inner, turning)
    pattern = a[..., None] * direction[0] + b[..., None] * direction[1]
    x = (signal * s)[:, None, None] * pattern
    x += offset[:, None, :]
    x += sigma[:, None, None] * rng.standard_normal((n, max_len, dim), dtype=np.float32)
    x *= (np.arange(max_len)[None, :] < lengths[:, None])[..., None]  # zero padding after the valid length
    return x.astype(np.float32)


def _split(config: SyntheticConfig, structure: PlantedStructure, n: int, first_speaker: int,
           rng: np.random.Generator) -> tuple[dict, int]:
    s = rng.normal(0.0, config.label_scale, size=n)
    ratings = np.rint(np.clip(s[:, None] + rng.normal(0.0, config.annotator_noise,
                                                      size=(n, config.annotators)), -3, 3))
    labels = np.round(ratings.mean(axis=1), 4).astype(np.float32)  # mean of integer ratings
    gamma = rng.gamma(config.noise_dof / 2, 2 / config.noise_dof, size=(n, 3))
    sigma = np.asarray(config.noise) * np.minimum(gamma ** -0.5, config.max_noise_scale)
    speaker = _speakers(n, config.clips_per_speaker, rng)
    clip = np.arange(n) - np.searchsorted(speaker, speaker)  # index within its speaker

    max_lens = (config.text_len, config.audio_len, config.vision_len)
    features, lengths = [], []
    for m, max_len in enumerate(max_lens):
        lens = _lengths(n, max_len, config.min_len_fraction, 3 if m == 0 else 1, rng)
        offset = rng.normal(0.0, config.speaker_scale,
                            size=(speaker[-1] + 1, structure.directions[m].shape[1]))[speaker]
        x = _sequence(s, lens, max_len, structure.directions[m], config.signal[m],
                      offset.astype(np.float32), sigma[:, m], rng, inner=(1, 1) if m == 0 else (0, 0),
                      turning=config.turning)
        features.append(x)
        lengths.append(lens)
    text, audio, vision = features
    rows = np.arange(n)
    last = lengths[0] - 1
    text[:, 0] += structure.cls  # [CLS] and [SEP]: fixed vectors, no sentiment
    text[rows, last] += structure.sep

    ids = rng.integers(1000, VOCAB_SIZE, size=(n, config.text_len))
    ids *= np.arange(config.text_len)[None, :] < lengths[0][:, None]
    ids[:, 0], ids[rows, last] = CLS_ID, SEP_ID
    mask = (ids != PAD_ID).astype(np.float32)
    text_bert = np.stack([ids.astype(np.float32), mask, np.zeros_like(mask)], axis=1)
    raw_text = np.array([" ".join(f"w{i}" for i in row[1:length - 1])
                         for row, length in zip(ids, lengths[0])], dtype=object)

    broken = np.flatnonzero(rng.random(n) < config.neg_inf_fraction)  # COVAREP-style log(0)
    frame = (rng.random(len(broken)) * lengths[1][broken]).astype(np.int64)
    audio[broken, frame, rng.integers(0, config.audio_dim, size=len(broken))] = -np.inf

    speaker_ids = speaker + first_speaker
    split = {
        "text": text, "text_bert": text_bert, "audio": audio, "vision": vision,
        "audio_lengths": lengths[1].astype(np.int64), "vision_lengths": lengths[2].astype(np.int64),
        "regression_labels": labels,
        "classification_labels": np.sign(labels).astype(np.int64) + 1,  # 0 neg, 1 neutral, 2 pos
        "id": np.array([f"syn{config.seed}_spk{k:04d}$_${c}" for k, c in zip(speaker_ids, clip)],
                       dtype=object),
        "raw_text": raw_text,
        "latent_sentiment": s.astype(np.float32),
        "noise_scale": sigma.astype(np.float32),
    }
    return split, int(speaker_ids[-1]) + 1


def generate_synthetic(config: SyntheticConfig = SyntheticConfig()) -> dict[str, dict]:
    """A raw MMSA-format dict {train, valid, test}; identical arrays for an identical config."""
    structure, (_, split_seqs) = planted_structure(config), _streams(config)
    data, first_speaker = {}, 0
    for name, seq in zip(SPLITS, split_seqs):  # own stream per split: sizes don't leak across
        data[name], first_speaker = _split(config, structure, config.split_sizes[name],
                                           first_speaker, np.random.default_rng(seq))
    return data


def write_synthetic(config: SyntheticConfig, path: str | os.PathLike) -> dict[str, dict]:
    """Generate and pickle (protocol 4, numpy arrays only: `restricted_load` reads it back)."""
    data = generate_synthetic(config)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=4)
    return data


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m casd.data.synthetic", description="Write the synthetic MMSA-format data set.")
    parser.add_argument("--out", type=Path, required=True, help="output .pkl path")
    for f in dataclasses.fields(SyntheticConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, tuple):
            parser.add_argument(flag, type=float, nargs=3, default=f.default, metavar=("T", "A", "V"))
        elif isinstance(f.default, bool):  # type=bool would read "false" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return parser


def _write(argv: list[str] | None) -> None:
    args = vars(_parser().parse_args(argv))
    out = args.pop("out")
    check_writable_file(out)
    try:
        config = SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    except ValueError as exc:  # the message starts with the field, whose flag is --field-name
        flag = "--" + str(exc).split(" ", 1)[0].replace("_", "-")
        raise ConfigError(f"{flag}: {exc}") from exc
    start = time.perf_counter()
    data = generate_synthetic(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda handle: pickle.dump(data, handle, protocol=4))
    sizes = {name: len(split["regression_labels"]) for name, split in data.items()}
    print(f"wrote {out}: {sizes} in {time.perf_counter() - start:.2f} s ({config})")


def main(argv: list[str] | None = None) -> int:
    """``python -m casd.data.synthetic``: 0, or 2 with one line naming what to fix (casd.cli)."""
    return run_command("casd.data.synthetic", lambda: _write(argv))


if __name__ == "__main__":
    sys.exit(main())
