"""MMSA feature pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS) as normalised `Split`s.

One split of an MMSA file is a dict of arrays keyed `text`, `text_bert`, `audio`, `vision`,
`audio_lengths`, `vision_lengths`, `regression_labels` / `classification_labels`, `id`,
`raw_text` (SIMS adds `regression_labels_T/A/V`). `split_from_mmsa` reproduces MMSA's
`data_loader.py`: features as float32, audio `-inf` set to 0, text lengths from the BERT mask
row, and, for aligned files without length keys, audio/vision lengths taken from the text mask
as MMSA does under `need_data_aligned`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import numpy as np

from casd.data.safe_pickle import restricted_load
from casd.vocab import SPLITS, TASKS


@dataclass
class Split:
    """One split, normalised: float32 features, int64 lengths in [0, L], one label per sample."""

    text: np.ndarray  # float32 [N, Lt, Ft] precomputed text features
    text_lengths: np.ndarray  # int64 [N]
    audio: np.ndarray  # float32 [N, La, Fa]
    audio_lengths: np.ndarray  # int64 [N]
    vision: np.ndarray  # float32 [N, Lv, Fv]
    vision_lengths: np.ndarray  # int64 [N]
    labels: np.ndarray  # float32 [N] (regression) or int64 [N] (class ids)
    ids: np.ndarray  # str [N]
    text_bert: np.ndarray | None = None  # [N, 3, Lt]: token ids / attention mask / segment ids
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. regression_labels_T
    raw_text: np.ndarray | None = None  # str [N]

    def __post_init__(self) -> None:
        n = self.num_samples
        for name in ("text", "audio", "vision"):
            features = getattr(self, name)
            lengths = getattr(self, f"{name}_lengths")
            if features.ndim != 3 or features.shape[0] != n:
                raise ValueError(f"{name} must be [N={n}, L, F], got {list(features.shape)}")
            if lengths.shape != (n,):
                raise ValueError(f"{name}_lengths must be [{n}], got {list(lengths.shape)}")
            if lengths.size and (lengths.min() < 0 or lengths.max() > features.shape[1]):
                raise ValueError(f"{name}_lengths must lie in [0, {features.shape[1]}]")
        if self.text_bert is not None and self.text_bert.shape != (n, 3, self.text.shape[1]):
            raise ValueError(f"text_bert must be [{n}, 3, {self.text.shape[1]}], "
                             f"got {list(self.text_bert.shape)}")
        for name, array in [("labels", self.labels), ("ids", self.ids), ("raw_text", self.raw_text),
                            *self.extra_labels.items()]:
            if array is not None and array.shape != (n,):
                raise ValueError(f"{name} must be [{n}], got {list(array.shape)}")

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        return self.text.shape[2], self.audio.shape[2], self.vision.shape[2]

    @property
    def seq_lens(self) -> tuple[int, int, int]:
        return self.text.shape[1], self.audio.shape[1], self.vision.shape[1]

    def subset(self, index: np.ndarray | slice | list[int]) -> "Split":
        """Rows `index` of every per-sample array (a copy for integer/bool index arrays)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                values[f.name] = {k: v[index] for k, v in value.items()}
            else:
                values[f.name] = None if value is None else value[index]
        return Split(**values)

    def replace(self, **changes: object) -> "Split":
        """A shallow copy with some fields replaced (arrays are shared, not copied)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Split(**values)


def _get(raw: dict, key: str, where: str) -> np.ndarray:
    if key not in raw:
        raise KeyError(f"{where}: missing key {key!r} (present: {sorted(raw)})")
    return np.asarray(raw[key])


def _features(raw: dict, key: str, where: str) -> np.ndarray:
    array = _get(raw, key, where)
    if array.ndim != 3:
        raise ValueError(f"{where}: {key!r} must have rank 3 [N, L, F], got shape {list(array.shape)}")
    return array.astype(np.float32)


def _per_sample(raw: dict, key: str, where: str) -> np.ndarray:
    """[N] or [N, 1] (MMSA stores labels both ways) -> [N]."""
    array = _get(raw, key, where)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{where}: {key!r} must be [N] or [N, 1], got shape {list(array.shape)}")
    return array


def _lengths(raw: dict, key: str, max_len: int, where: str) -> np.ndarray:
    return np.clip(_per_sample(raw, key, where).astype(np.int64), 0, max_len)


def _text_lengths_from_features(text: np.ndarray) -> np.ndarray:
    """Without a BERT mask: one past the last row with any non-zero feature (0 if none)."""
    nonzero = np.any(text != 0, axis=2)  # [N, Lt]
    last = text.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0).astype(np.int64)


def split_from_mmsa(raw: dict, task: str = "regression", where: str = "split",
                    nan_to_zero: bool = False) -> Split:
    """Normalise one MMSA split dict into a `Split`.

    `where` names the split in error messages (e.g. "mosi/unaligned_50.pkl split 'train'").
    Non-finite features left after MMSA's audio `-inf` -> 0 are an error unless `nan_to_zero`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if not isinstance(raw, dict):
        raise TypeError(f"{where}: expected a dict of arrays, got {type(raw).__name__}")
    text = _features(raw, "text", where)
    audio = _features(raw, "audio", where)
    vision = _features(raw, "vision", where)
    audio[audio == -np.inf] = 0  # as MMSA's loader
    for key, array in (("text", text), ("audio", audio), ("vision", vision)):
        bad = ~np.isfinite(array)
        if bad.any():
            if not nan_to_zero:
                raise ValueError(f"{where}: {key!r} holds {int(bad.sum())} non-finite values "
                                 f"(pass nan_to_zero=True to replace them by 0)")
            array[bad] = 0

    text_bert = None
    if "text_bert" in raw:
        text_bert = _get(raw, "text_bert", where)
        if text_bert.ndim != 3 or text_bert.shape[1] != 3:
            raise ValueError(f"{where}: 'text_bert' must be [N, 3, L], got {list(text_bert.shape)}")
        if text_bert.shape[2] != text.shape[1]:
            raise ValueError(f"{where}: 'text_bert' length {text_bert.shape[2]} differs from "
                             f"'text' length {text.shape[1]}")
        text_bert = text_bert.astype(np.float32)  # MMSA casts the BERT triple to float32 too
        text_lengths = text_bert[:, 1, :].sum(axis=1).astype(np.int64)
    else:
        text_lengths = _text_lengths_from_features(text)
    text_lengths = np.clip(text_lengths, 0, text.shape[1])

    lengths = {}
    for key, array in (("audio", audio), ("vision", vision)):
        if f"{key}_lengths" in raw:
            lengths[key] = _lengths(raw, f"{key}_lengths", array.shape[1], where)
        elif array.shape[1] == text.shape[1]:  # aligned: MMSA sums the text mask
            lengths[key] = text_lengths.copy()
        else:
            raise KeyError(f"{where}: missing key '{key}_lengths' and {key} length "
                           f"{array.shape[1]} differs from text length {text.shape[1]}, so "
                           f"the file is not aligned and lengths cannot be derived")

    label_key = f"{task}_labels"
    labels = _per_sample(raw, label_key, where)
    if task == "regression":
        labels = labels.astype(np.float32)
    else:
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"{where}: {label_key!r} must hold integral class ids")
        labels = labels.astype(np.int64)
    extra = {key: _per_sample(raw, key, where).astype(labels.dtype)
             for key in sorted(raw) if key.startswith(label_key + "_")}

    ids = _per_sample(raw, "id", where).astype(str)
    raw_text = _per_sample(raw, "raw_text", where).astype(str) if "raw_text" in raw else None

    n = text.shape[0]
    sizes = {"text": n, "audio": audio.shape[0], "vision": vision.shape[0], label_key: len(labels),
             "id": len(ids), "audio_lengths": len(lengths["audio"]),
             "vision_lengths": len(lengths["vision"])}
    if text_bert is not None:
        sizes["text_bert"] = text_bert.shape[0]
    if raw_text is not None:
        sizes["raw_text"] = len(raw_text)
    sizes.update({key: len(value) for key, value in extra.items()})
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{where}: keys disagree on the number of samples: {sizes}")

    return Split(text=text, text_lengths=text_lengths, audio=audio, audio_lengths=lengths["audio"],
                 vision=vision, vision_lengths=lengths["vision"], labels=labels, ids=ids,
                 text_bert=text_bert, extra_labels=extra, raw_text=raw_text)


def load_mmsa(path: str | os.PathLike, task: str = "regression",
              nan_to_zero: bool = False) -> dict[str, Split]:
    """Read an MMSA pickle with the restricted unpickler -> {"train", "valid", "test"} Splits."""
    data = restricted_load(path)
    if not isinstance(data, dict):
        raise TypeError(f"{os.fspath(path)}: expected a dict of splits, got {type(data).__name__}")
    missing = [name for name in SPLITS if name not in data]
    if missing:
        raise KeyError(f"{os.fspath(path)}: missing split(s) {missing} (present: {sorted(data)})")
    return {name: split_from_mmsa(data[name], task, where=f"{os.fspath(path)} split {name!r}",
                                  nan_to_zero=nan_to_zero)
            for name in SPLITS}
