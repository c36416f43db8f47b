"""MMSA feature pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS) as normalised `Split`s.

One split of an MMSA file is a dict of arrays keyed `text`, `text_bert`, `audio`, `vision`,
`audio_lengths`, `vision_lengths`, `regression_labels` / `classification_labels`, `id`,
`raw_text` (SIMS adds `regression_labels_T/A/V`). `split_from_mmsa` reproduces MMSA's
`data_loader.py`: features as float32, audio `-inf` set to 0, text lengths from the BERT mask
row, and, for aligned files without length keys, audio/vision lengths taken from the text mask
as MMSA does under `need_data_aligned`.

Files are read with the safe loader (`casd.data.safe_pickle`) and checked before anything is
built from them: every problem is an `InvalidDataError` (a `casd.errors.DataError`) whose one
line names the file, split and key. `casd.data.validate` adds the checks across splits and
against the data set kind.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import numpy as np

from casd.data.errors import InvalidDataError
from casd.data.safe_pickle import restricted_load
from casd.data.validate import require_frames, validate_splits
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


def _fail(where: str, what: str) -> InvalidDataError:
    return InvalidDataError(f"{where}: {what}")


def _present(raw: dict) -> str:
    keys = sorted(str(k) for k in raw)
    return ", ".join(keys[:20]) + (f", ... ({len(keys)} keys)" if len(keys) > 20 else "")


def _get(raw: dict, key: str, where: str) -> np.ndarray:
    """raw[key] as a numeric (bool/int/float) array."""
    if key not in raw:
        raise _fail(where, f"missing key {key!r} (present: {_present(raw)})")
    try:
        array = np.asarray(raw[key])
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise _fail(where, f"{key!r} is not an array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise _fail(where, f"{key!r} must hold numbers, got dtype {array.dtype}")
    return array


def _features(raw: dict, key: str, where: str) -> np.ndarray:
    array = _get(raw, key, where)
    if array.ndim != 3:
        raise _fail(where, f"{key!r} must have rank 3 [N, L, F], got shape {list(array.shape)}")
    require_frames(array.shape, key, where)
    with np.errstate(all="ignore"):  # values beyond float32 (inf) or NaN: reported by the caller
        return array.astype(np.float32)


def _per_sample(raw: dict, key: str, where: str) -> np.ndarray:
    """[N] or [N, 1] (MMSA stores labels both ways) -> [N]."""
    array = _get(raw, key, where) if key not in ("id", "raw_text") else _strings(raw, key, where)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise _fail(where, f"{key!r} must be [N] or [N, 1], got shape {list(array.shape)}")
    return array


def _strings(raw: dict, key: str, where: str) -> np.ndarray:
    if key not in raw:
        raise _fail(where, f"missing key {key!r} (present: {_present(raw)})")
    try:
        return np.asarray(raw[key]).astype(str)
    except (ValueError, TypeError) as exc:
        raise _fail(where, f"{key!r} is not an array of strings ({exc})") from None


def _offenders(values: np.ndarray, bad: np.ndarray) -> str:
    """'3 do not (sample 5: nan)': how many values fail a check, and the first one."""
    first = int(np.flatnonzero(bad)[0])
    return f"{int(bad.sum())} do not (sample {first}: {float(values[first]):g})"


def _lengths(raw: dict, key: str, max_len: int, where: str) -> np.ndarray:
    """Valid lengths: integers in [0, max_len] (MMSA writes them as lists or arrays)."""
    lengths = _per_sample(raw, key, where)
    with np.errstate(all="ignore"):  # non-finite lengths are among the ones reported
        bad = ~np.isfinite(lengths) | (lengths < 0) | (lengths > max_len) | (np.mod(lengths, 1) != 0)
    if bad.any():
        raise _fail(where, f"{key!r} must hold whole numbers in [0, {max_len}] (the padded length); "
                    f"{_offenders(lengths, bad)}")
    return lengths.astype(np.int64)


def _labels(raw: dict, key: str, task: str, where: str) -> np.ndarray:
    """Finite labels; class ids are whole numbers (float32 scores, int64 classes)."""
    labels = _per_sample(raw, key, where)
    bad = ~np.isfinite(labels)
    if bad.any():
        raise _fail(where, f"{key!r} must hold finite labels; {_offenders(labels, bad)}")
    if task == "regression":
        with np.errstate(all="ignore"):
            labels = labels.astype(np.float32)
        if not np.isfinite(labels).all():
            raise _fail(where, f"{key!r} holds labels beyond float32's range")
        return labels
    bad = (np.mod(labels, 1) != 0) | (np.abs(labels) >= 2**53)
    if bad.any():
        raise _fail(where, f"{key!r} must hold integral class ids; {_offenders(labels, bad)}")
    return labels.astype(np.int64)


def _text_lengths_from_features(text: np.ndarray) -> np.ndarray:
    """Without a BERT mask: one past the last row with any non-zero feature (0 if none)."""
    nonzero = np.any(text != 0, axis=2)  # [N, Lt]
    last = text.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0).astype(np.int64)


def split_from_mmsa(raw: dict, task: str = "regression", where: str = "split",
                    nan_to_zero: bool = False) -> Split:
    """Normalise and check one MMSA split dict into a `Split`.

    `where` names the split in error messages (e.g. "mosi/unaligned_50.pkl split 'train'").
    Every problem with the data raises `InvalidDataError` (a `casd.errors.DataError`) with one
    line naming `where` and the key: a missing key, a wrong rank or dtype, no samples, a
    padded length or feature width of 0, lengths outside [0, L], non-finite labels, class ids
    that are not whole numbers, keys that disagree on N. Non-finite features left after
    MMSA's audio `-inf` -> 0 are an error unless `nan_to_zero`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a dict of arrays, got {type(raw).__name__}")
    text = _features(raw, "text", where)
    audio = _features(raw, "audio", where)
    vision = _features(raw, "vision", where)
    if text.shape[0] == 0:
        raise _fail(where, "the split has no samples ('text' has N = 0)")
    audio[audio == -np.inf] = 0  # as MMSA's loader
    for key, array in (("text", text), ("audio", audio), ("vision", vision)):
        bad = ~np.isfinite(array)
        if bad.any():
            if not nan_to_zero:
                raise _fail(where, f"{key!r} holds {int(bad.sum())} non-finite values "
                            f"(pass nan_to_zero=True to replace them by 0)")
            array[bad] = 0

    text_bert = None
    if "text_bert" in raw:
        text_bert = _get(raw, "text_bert", where)
        if text_bert.ndim != 3 or text_bert.shape[1] != 3:
            raise _fail(where, f"'text_bert' must be [N, 3, L], got {list(text_bert.shape)}")
        if text_bert.shape[2] != text.shape[1]:
            raise _fail(where, f"'text_bert' length {text_bert.shape[2]} differs from 'text' length {text.shape[1]}")
        mask = text_bert[:, 1, :]
        if not np.isin(mask, (0, 1)).all():
            raise _fail(where, "the 'text_bert' attention mask (row 1) must hold only 0 and 1")
        with np.errstate(all="ignore"):  # token ids are not used by the model; the mask was checked
            text_bert = text_bert.astype(np.float32)  # MMSA casts the BERT triple to float32 too
        text_lengths = mask.sum(axis=1).astype(np.int64)
    else:
        text_lengths = _text_lengths_from_features(text)

    lengths = {}
    for key, array in (("audio", audio), ("vision", vision)):
        if f"{key}_lengths" in raw:
            lengths[key] = _lengths(raw, f"{key}_lengths", array.shape[1], where)
        elif array.shape[1] == text.shape[1]:  # aligned: MMSA sums the text mask
            lengths[key] = text_lengths.copy()
        else:
            raise _fail(where, f"missing key '{key}_lengths' and {key} length {array.shape[1]} differs "
                        f"from text length {text.shape[1]}, so the file is not aligned and lengths cannot be derived")

    label_key = f"{task}_labels"
    labels = _labels(raw, label_key, task, where)
    extra = {key: _labels(raw, key, task, where) for key in sorted(raw, key=str)
             if isinstance(key, str) and key.startswith(label_key + "_")}

    ids = _per_sample(raw, "id", where)
    raw_text = _per_sample(raw, "raw_text", where) if "raw_text" in raw else None

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
        raise _fail(where, f"keys disagree on the number of samples: {sizes}")

    return Split(text=text, text_lengths=text_lengths, audio=audio, audio_lengths=lengths["audio"],
                 vision=vision, vision_lengths=lengths["vision"], labels=labels, ids=ids,
                 text_bert=text_bert, extra_labels=extra, raw_text=raw_text)


def load_mmsa(path: str | os.PathLike, task: str = "regression", nan_to_zero: bool = False,
              dataset: str | None = None, max_bytes: int | None = None) -> dict[str, Split]:
    """Read an MMSA pickle with the safe loader -> {"train", "valid", "test"} checked Splits.

    Every split is checked by `split_from_mmsa` and all of them together by
    `casd.data.validate.validate_splits` (feature widths, class ids; label ranges of
    `dataset` when given), so any problem is an `InvalidDataError` naming the file, split and
    key before a model is built. `max_bytes` caps the decoded size (see `restricted_load`).
    """
    source = os.fspath(path)
    data = restricted_load(path, max_bytes=max_bytes)
    if not isinstance(data, dict):
        raise _fail(source, f"expected a dict of splits {list(SPLITS)}, got {type(data).__name__}")
    missing = [name for name in SPLITS if name not in data]
    if missing:
        raise _fail(source, f"missing split(s) {missing} (present: {_present(data)})")
    splits = {name: split_from_mmsa(data[name], task, where=f"{source} split {name!r}",
                                    nan_to_zero=nan_to_zero)
              for name in SPLITS}
    validate_splits(splits, dataset, task, source)
    return splits
