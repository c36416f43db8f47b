"""A trained checkpoint as a Python predictor: ``casd.load(path).predict(data, condition)``.

    import casd
    model = casd.load("runs/x/best.pt")                      # str or PathLike
    result = model.predict("feats.pkl", condition="modality_ta")              # an MMSA pickle's test split
    result = model.predict({"text": t, "audio": a, "vision": v}, "frame_0.5")  # arrays of one split
    result.output, result.uncertainty, result.weights        # numpy, one row per sample

``data`` is an MMSA feature pickle (a dict of splits, or one split's dict; read with the
restricted unpickler), or one split's arrays as a mapping in the MMSA layout
(casd/data/mmsa.py): ``text`` [N, Lt, Ft], ``audio`` [N, La, Fa], ``vision`` [N, Lv, Fv]
(numpy arrays or tensors), optionally ``audio_lengths`` / ``vision_lengths`` [N] (default: the
full padded length), ``text_bert`` [N, 3, Lt] (text lengths from its mask; without it, up to
the last non-zero frame, as for MMSA files), labels (``labels`` or ``regression_labels`` /
``classification_labels``: then ``result.metrics`` holds MMSA's metrics) and ``id``.

``condition`` applies one evaluation condition first: ``frame_0.0`` .. ``frame_0.9`` (the
frame masks of the run's recorded evaluation seed, i.e. its test masks, unless ``eval_seed``
says otherwise) or ``modality_t`` .. ``modality_tav``; None applies nothing.

Before predicting, the data are checked against what the checkpoint was trained on
(casd.checkpoint.check_data_compatible): other feature dimensions, data set kind or task are a
CheckpointError naming every difference; other sequence lengths are only a note. Nothing here
reads the command line; casd.predict is this module behind flags.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from casd.checkpoint import check_data_compatible, load_model, recorded_synthetic
from casd.config import EvalConfig
from casd.data import (EvalCondition, InvalidDataError, Split, apply_condition, generate_synthetic, restricted_load,
                       split_from_mmsa, validate_split)
from casd.device import resolve_device
from casd.errors import CheckpointError, ConfigError, DataError
from casd.evaluate import predict_split, test_conditions
from casd.metrics import compute_metrics
from casd.vocab import SPLITS

__all__ = ["PredictionResult", "TrainedModel", "load", "read_raw_split"]

# Keys a caller's arrays may use for the labels besides MMSA's own ``<task>_labels``.
LABEL_ALIASES = ("labels",)


@dataclass
class PredictionResult:
    """Per-sample predictions of one split under one condition (numpy, rows in input order)."""

    output: np.ndarray  # [N] regression scores, or [N, C] class logits
    uncertainty: np.ndarray  # [N] ubar = sum_k pi_k u_k: higher = less sure (NaN: the model has none)
    weights: np.ndarray  # [N, 7] component weights pi over casd.modalities.COMBINATION_NAMES
    ids: np.ndarray  # [N] sample ids (0..N-1 as text when the data had none)
    labels: np.ndarray | None  # [N], when the data had labels
    condition: str  # the condition's name, or "none"
    source: str  # where the data came from
    metrics: dict[str, float] | None = None  # MMSA metrics, when the data had labels
    notes: list[str] = field(default_factory=list)  # harmless differences from the training data


def read_raw_split(path: str | os.PathLike, split: str = "test") -> dict:
    """One split's dict of an MMSA pickle: ``split`` of a multi-split file, or the file itself
    when it holds one split's arrays at the top level."""
    path = Path(path)
    data = restricted_load(path)  # a missing file, a folder, an unsafe or corrupt pickle: one line
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict (of splits, or of one split's arrays), got {type(data).__name__}")
    if "text" in data:  # one split's arrays at the top level
        return data
    if split not in data:
        raise DataError(f"{path}: no split {split!r} (present: {sorted(map(str, data))}); choose one with --split")
    if not isinstance(data[split], dict):
        raise DataError(f"{path} split {split!r}: expected a dict of arrays, got {type(data[split]).__name__}")
    return data[split]


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if torch.is_tensor(value) else value


def _from_arrays(arrays: Mapping, task: str) -> dict:
    """A caller's arrays as an MMSA split dict: defaults for lengths and ids, labels under MMSA's key."""
    raw = {key: _numpy(value) for key, value in arrays.items()}
    missing = [key for key in ("text", "audio", "vision") if key not in raw]
    if missing:
        raise DataError(f"feature arrays: missing {', '.join(map(repr, missing))} (present: {sorted(raw)})")
    n = len(raw["text"])
    for modality in ("audio", "vision"):
        features = np.asarray(raw[modality])
        if f"{modality}_lengths" not in raw and features.ndim == 3:
            raw[f"{modality}_lengths"] = np.full(len(features), features.shape[1], dtype=np.int64)
    for alias in LABEL_ALIASES:
        if alias in raw:
            if f"{task}_labels" in raw:
                raise DataError(f"feature arrays: give the labels once, as {alias!r} or {task + '_labels'!r}")
            raw[f"{task}_labels"] = raw.pop(alias)
    raw.setdefault("id", np.arange(n).astype(str))
    return raw


class TrainedModel:
    """A checkpoint's model with what it was trained on; made by :func:`load`."""

    def __init__(self, model: torch.nn.Module, checkpoint: dict, device: torch.device, path: str):
        self.model = model
        self.device = device
        self.path = path
        self.kind: str = checkpoint["model_kind"]
        self.metadata: dict = checkpoint["metadata"]  # casd.train.describe_data of the training data
        self.config: dict | None = checkpoint.get("config")  # the RunConfig (format 2 on)
        self.provenance: dict | None = checkpoint.get("provenance")  # casd.provenance (absent in old ones)

    def __repr__(self) -> str:
        return (f"TrainedModel({self.kind!r} from {self.path}, trained on {self.metadata.get('source')}, "
                f"{self.dataset}/{self.task}, feature dims {self.metadata['feature_dims']}, on {self.device})")

    @property
    def dataset(self) -> str:
        return self.metadata["dataset"]

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def eval_seed(self) -> int:
        """The run's evaluation seed: its test masks (1111 for checkpoints that predate RunConfig)."""
        return self.config["evaluation"]["seed"] if self.config else EvalConfig.seed

    def conditions(self, eval_seed: int | None = None) -> dict[str, EvalCondition]:
        """The 17 evaluation conditions by name, with the run's masks unless ``eval_seed`` is given."""
        seed = self.eval_seed if eval_seed is None else eval_seed
        try:
            return {c.name: c for c in test_conditions(seed)}
        except ValueError as exc:
            raise ConfigError(f"eval seed {seed}: {exc}") from exc

    def condition(self, name: str | EvalCondition | None, eval_seed: int | None = None) -> EvalCondition | None:
        if name is None or isinstance(name, EvalCondition):
            return name
        if name == "none":
            return None
        conditions = self.conditions(eval_seed)
        if name not in conditions:
            raise ConfigError(f"unknown condition {name!r}; choose none or one of {sorted(conditions)}")
        return conditions[name]

    def synthetic_split(self, split: str = "test") -> dict:
        """The raw arrays of ``split`` of the synthetic data set this model was trained on,
        regenerated from the recorded generator settings (for ``predict``)."""
        config = recorded_synthetic(self.metadata)
        if config is None:
            raise DataError(f"{self.path} was trained on {self.metadata.get('source')}, not on the synthetic "
                            "data set; pass that data instead")
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
        return generate_synthetic(config)[split]

    def read(self, data: str | os.PathLike | Mapping | Split, split: str = "test",
             task: str | None = None) -> tuple[Split, bool, str]:
        """(the data as a Split, whether it has labels, where it came from); the split is checked
        as casd.train checks its splits (casd.data.validate_split), against the data set kind and
        classes this model was trained on."""
        task = task or self.task
        if isinstance(data, Split):
            return data, True, "split"
        if isinstance(data, Mapping):
            raw, where = _from_arrays(data, task), "arrays"
        elif isinstance(data, (str, os.PathLike)):
            raw, where = dict(read_raw_split(data, split)), f"{os.fspath(data)} split {split!r}"
        else:
            raise DataError(f"data must be a pickle path, a mapping of arrays or a Split, got {type(data).__name__}")
        label_key = f"{task}_labels"
        has_labels = label_key in raw
        if not has_labels:  # unlabelled new data: placeholder labels, no metrics
            n = len(np.asarray(raw["text"])) if "text" in raw else 0
            raw[label_key] = np.zeros(n, dtype=np.float32 if task == "regression" else np.int64)
        table = split_from_mmsa(raw, task, where=where)
        validate_split(table, where, self.dataset, task, self.metadata.get("num_classes"), has_labels)
        return table, has_labels, where

    def check(self, split: Split, has_labels: bool, dataset: str | None = None, task: str | None = None) -> list[str]:
        """Refuse data that do not fit this model (CheckpointError naming every difference);
        return notes on harmless differences."""
        return check_data_compatible(split, self.metadata, has_labels, dataset, task)

    def predict(self, data: str | os.PathLike | Mapping | Split, condition: str | EvalCondition | None = None, *,
                split: str = "test", eval_seed: int | None = None, dataset: str | None = None,
                task: str | None = None, batch_size: int = 256) -> PredictionResult:
        """Outputs, uncertainty and component weights for every sample of ``data`` under ``condition``.

        ``split`` picks the split of a multi-split pickle; ``dataset`` / ``task``, when given,
        must be the checkpoint's (a check, not a switch).
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        chosen = self.condition(condition, eval_seed)  # before reading data: fail fast
        table, has_labels, where = self.read(data, split, task)
        notes = self.check(table, has_labels, dataset, task)
        present = None
        if chosen is not None:
            table, present = apply_condition(table, chosen)
        predicted = predict_split(self.model, table, present, self.device, batch_size)
        bad = ~np.isfinite(predicted["output"]).reshape(table.num_samples, -1).all(axis=1)
        if bad.any():  # finite, validated features can still overflow the model: features on another scale?
            what = (f"{where}: the model's outputs are not finite for {int(bad.sum())} of {len(bad)} samples "
                    f"(first: {table.ids[int(np.flatnonzero(bad)[0])]}); are the features on the scale it was "
                    "trained on?")
            if has_labels:
                raise InvalidDataError(what + " (no metrics can be computed)")
            notes.append(what)
        metrics = compute_metrics(predicted["output"], table.labels, self.dataset, self.task) if has_labels else None
        return PredictionResult(predicted["output"], predicted["uncertainty"], predicted["weights"], table.ids,
                                table.labels if has_labels else None, chosen.name if chosen else "none", where,
                                metrics, notes)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of a casd.train checkpoint (best.pt or last.pt; str or PathLike), ready to predict.

    ``device``: "cpu" (default), "cuda", "cuda:1" or "auto". A missing, torn or foreign file is a
    casd.errors.CheckpointError with one line saying why.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model, checkpoint = load_model(path, device)
    missing = [key for key in ("task", "dataset", "feature_dims") if key not in checkpoint["metadata"]]
    if missing:
        raise CheckpointError(f"{os.fspath(path)}: its metadata lack {missing}; it is not a casd.train checkpoint")
    return TrainedModel(model, checkpoint, device, os.fspath(path))
