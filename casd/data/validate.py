"""Checks across splits and against the data set kind, done at load, before any model is built.

`split_from_mmsa` checks each split of a file on its own (keys, ranks, dtypes, finite
values, lengths in [0, L]). This module checks what needs all the splits or the
``--dataset`` / ``--task`` flags, on `Split`s from any source (file or synthetic):

- the splits train, valid and test are all present, and none is empty;
- every modality has a padded length and a feature width of at least 1 (the encoders attend
  over frames: a modality with none is an IndexError deep in the model otherwise);
- feature widths (text, audio, vision) are equal in every split: the model's input layers are
  sized from train, so a wider test split would fail only after training;
- regression: labels, and SIMS's unimodal labels, are finite and lie in the range of the data
  set kind, `LABEL_RANGES` (MOSI/MOSEI [-3, 3], SIMS [-1, 1]); MOSI labels scored as SIMS
  would otherwise pass silently with meaningless SIMS metrics;
- classification: class ids are whole numbers in [0, C), where C = 1 + the largest train id
  and 2 <= C <= `MAX_CLASSES`; a valid/test id >= C has no model output. The cap stops a stray
  label such as 10^6 from building a 10^6-way output layer (17M parameters at the default
  width, then out of memory): sentiment and emotion data sets have 2 to about 10 classes.

`validate_splits` returns a `DataDescription`, the data-derived part of what a run records.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from casd.data.errors import InvalidDataError
from casd.errors import ConfigError

if TYPE_CHECKING:
    from casd.data.mmsa import Split

__all__ = ["DataDescription", "LABEL_RANGES", "MAX_CLASSES", "require_frames", "validate_split", "validate_splits"]

LABEL_RANGES: dict[str, tuple[float, float]] = {"mosi": (-3.0, 3.0), "mosei": (-3.0, 3.0), "sims": (-1.0, 1.0)}
LABEL_TOLERANCE = 1e-4  # labels are stored as float32: 3.0 may read back as 3.0000002
MAX_CLASSES = 100
MODALITY_NAMES = ("text", "audio", "vision")


@dataclass(frozen=True)
class DataDescription:
    """What the data are, as a run records it (``casd.train.describe_data`` writes these keys)."""

    feature_dims: tuple[int, int, int]  # (text, audio, vision) widths, equal in every split
    seq_lens: tuple[int, int, int]  # train's padded lengths
    sizes: dict[str, int]  # samples per split
    num_classes: int | None = None  # classification: C
    label_range: tuple[float, float] | None = None  # regression: train's smallest and largest label

    def as_meta(self) -> dict:
        """The JSON-able dict of these fields (lists for tuples), as in a checkpoint's metadata."""
        meta = {"feature_dims": list(self.feature_dims), "seq_lens": list(self.seq_lens), "sizes": dict(self.sizes)}
        if self.num_classes is not None:
            meta["num_classes"] = self.num_classes
        if self.label_range is not None:
            meta["label_range"] = list(self.label_range)
        return meta


def require_frames(shape: tuple[int, ...], key: str, where: str) -> None:
    """A modality's features [N, L, F] need L >= 1 and F >= 1 (absence is a length of 0)."""
    if len(shape) == 3 and (shape[1] == 0 or shape[2] == 0):
        raise InvalidDataError(f"{where}: {key!r} has shape {list(shape)}: every modality needs a padded length "
                               f"L >= 1 and a feature width F >= 1 (a sample lacking it has length 0)")


def _labels_in_range(values: np.ndarray, key: str, where: str, dataset: str) -> None:
    low, high = LABEL_RANGES[dataset]
    bad = ~np.isfinite(values) | (values < low - LABEL_TOLERANCE) | (values > high + LABEL_TOLERANCE)
    if bad.any():
        others = ", ".join(f"{kind} [{lo:g}, {hi:g}]" for kind, (lo, hi) in LABEL_RANGES.items() if kind != dataset)
        first = int(np.flatnonzero(bad)[0])
        raise InvalidDataError(
            f"{where}: {key!r} has {int(bad.sum())} label(s) outside [{low:g}, {high:g}], the range of --dataset "
            f"{dataset} (sample {first} is {values[first].item():g}; labels span [{np.nanmin(values):g}, "
            f"{np.nanmax(values):g}]); other kinds: {others}")


def _class_ids(values: np.ndarray, key: str, where: str, num_classes: int | None) -> None:
    limit = MAX_CLASSES if num_classes is None else num_classes
    if values.dtype.kind not in "iu":
        raise InvalidDataError(f"{where}: {key!r} must hold integer class ids, got dtype {values.dtype}")
    bad = (values < 0) | (values >= limit)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        bound = (f"at most {MAX_CLASSES} classes are supported (casd.data.validate.MAX_CLASSES)"
                 if num_classes is None else f"train has classes 0..{num_classes - 1}")
        raise InvalidDataError(f"{where}: {key!r} has {int(bad.sum())} class id(s) outside [0, {limit}) "
                               f"(sample {first} is {values[first].item()}); {bound}")


def validate_split(split: Split, where: str, dataset: str | None, task: str,
                   num_classes: int | None = None, labelled: bool = True) -> None:
    """Check one split: samples, frames, and (when `labelled`) its labels for `dataset`/`task`.

    Classification ids must lie in [0, `num_classes`) (default: [0, MAX_CLASSES)). For
    casd.predict on a new file: ``validate_split(split, where, args.dataset, task,
    metadata.get("num_classes"), has_labels)``.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"unknown task {task!r}")
    if split.num_samples == 0:
        raise InvalidDataError(f"{where}: the split has no samples")
    for name in MODALITY_NAMES:
        require_frames(getattr(split, name).shape, name, where)
    if not labelled:
        return
    key = f"{task}_labels"
    for label_key, values in ((key, split.labels), *split.extra_labels.items()):
        if task == "classification":
            _class_ids(values, label_key, where, num_classes)
        elif not np.isfinite(values).all():
            raise InvalidDataError(f"{where}: {label_key!r} holds non-finite labels")
        elif dataset is not None:
            _labels_in_range(values, label_key, where, dataset)


def validate_splits(splits: Mapping[str, Split], dataset: str | None, task: str, source: str) -> DataDescription:
    """Check train/valid/test together before a model is built; describe them.

    `source` names the file (or the synthetic set) in messages; `dataset` (mosi, mosei, sims,
    or None to skip the label-range check) and `task` are the run's flags. Raises
    `InvalidDataError` (a `casd.errors.DataError`: one line, exit status 2) for the first
    problem, naming the split and key. For casd.train, right after loading:
    ``description = validate_splits(splits, args.dataset, args.task, source)``.
    """
    if dataset is not None and dataset not in LABEL_RANGES:
        raise ConfigError(f"--dataset {dataset!r}: choose one of {sorted(LABEL_RANGES)}")
    names = ("train", "valid", "test")
    missing = [name for name in names if name not in splits]
    if missing:
        raise InvalidDataError(f"{source}: missing split(s) {missing} (present: {sorted(splits)})")
    where = {name: f"{source} split {name!r}" for name in names}
    train = splits["train"]
    validate_split(train, where["train"], dataset, task)
    num_classes = None
    if task == "classification":
        num_classes = int(train.labels.max()) + 1
        if num_classes < 2:
            raise InvalidDataError(f"{where['train']}: 'classification_labels' hold a single class (0); "
                                   f"classification needs at least 2")
    for name in names[1:]:
        validate_split(splits[name], where[name], dataset, task, num_classes)
        if splits[name].feature_dims != train.feature_dims:
            raise InvalidDataError(
                f"{where[name]}: feature widths (text, audio, vision) {tuple(splits[name].feature_dims)} differ "
                f"from train's {tuple(train.feature_dims)}")
    label_range = None if task == "classification" else (float(train.labels.min()), float(train.labels.max()))
    return DataDescription(feature_dims=tuple(int(d) for d in train.feature_dims),
                           seq_lens=tuple(int(d) for d in train.seq_lens),
                           sizes={name: splits[name].num_samples for name in names},
                           num_classes=num_classes, label_range=label_range)
