"""Checkpoints: writing them safely, reading them (also old ones), rebuilding the model, and
checking that a run, or new data, fits the checkpoint.

Layout (``FORMAT`` 2, written by casd.trainer.Trainer):

    format        2
    config        the RunConfig as JSON values (casd.config.to_dict)
    model_kind    a casd.registry.MODEL_KINDS name
    model_config  the network config (dict), enough to rebuild the model with build_model
    metadata      the data it was trained on (casd.train.describe_data): source, data set kind,
                  task, feature dims, sequence lengths, split sizes, training missingness, ...
    provenance    casd version, git commit, torch/triton/numpy versions, the data's SHA-256
                  (casd.provenance; optional: absent from checkpoints written before it existed)
    model         the state dict
    optimizer, scheduler, scaler, state   what a resumed run continues from

Format 1 (casd before RunConfig; no "format" key) had ``objective_config`` (num_samples,
lambda_cd, task, backend) and ``train_config`` (TrainConfig with the noise strategy) instead
of ``config``; the tau of pi lived in model_config. It loads for prediction as is, and resumes
after :func:`_config_fields_v1` maps what it recorded onto RunConfig's fields.

Nothing here reads the command line: paths are str or PathLike, errors are CheckpointError.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from casd.data import Split, SyntheticConfig
from casd.errors import CheckpointError
from casd.modalities import MODALITIES
from casd.registry import build_model, model_kind
from casd.serialize import flatten, from_dict

__all__ = ["FORMAT", "atomic_save", "run_record", "read_checkpoint", "load_model", "check_resumable",
           "check_data_compatible", "recorded_synthetic"]

FORMAT = 2
# Keys every checkpoint of every format has (what prediction needs).
REQUIRED = ("model", "model_kind", "model_config", "metadata")
# The RunConfig fields a resumed run must share with its checkpoint: everything that shapes the
# training trajectory. Device, output and these train fields may differ.
RESUME_SECTIONS = ("data", "model", "objective", "train", "evaluation")
RESUME_FREE = ("train.progress", "train.eval_batch_size", "train.max_bad_steps")


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a torn checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_record(config: dict, model: nn.Module, metadata: dict, provenance: dict | None = None) -> dict:
    """The part of every checkpoint of a run that describes it (``config``: RunConfig as JSON values;
    ``provenance``: casd.provenance's record of the code and data, never compared on resume)."""
    record = {"format": FORMAT, "config": config, "model_kind": model_kind(model),
              "model_config": model.config.to_dict(), "metadata": metadata}
    if provenance is not None:
        record["provenance"] = provenance
    return record


def read_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """The checkpoint at ``path`` as a dict with ``"format"`` set (1 for checkpoints that predate it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {path}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(checkpoint, dict) or k not in checkpoint]
        raise CheckpointError(f"{path} is not a casd.train checkpoint (no {', '.join(map(repr, missing))})")
    checkpoint.setdefault("format", 1)
    if checkpoint["format"] > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {checkpoint['format']}; this casd reads "
                              f"formats 1-{FORMAT}: update casd")
    return checkpoint


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and the checkpoint's record of how it was trained."""
    checkpoint = read_checkpoint(path, device)
    model = build_model(checkpoint["model_kind"], checkpoint["model_config"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {checkpoint['model_kind']} model "
                              f"of its recorded config: {exc}") from exc
    return model.to(device).eval(), checkpoint


def recorded_synthetic(metadata: dict) -> SyntheticConfig | None:
    """The synthetic data set a checkpoint was trained on (None for a data file), from its record."""
    if not metadata.get("synthetic"):
        return None
    return from_dict(SyntheticConfig, metadata["synthetic"], where="checkpoint metadata.synthetic")


# --- does a run fit its checkpoint? ---------------------------------------------------------------
def _config_fields(checkpoint: dict) -> dict[str, Any]:
    """The RunConfig fields a checkpoint records that a resumed run must share."""
    if checkpoint["format"] == 1:
        fields = _config_fields_v1(checkpoint)
    else:
        fields = flatten({s: checkpoint["config"][s] for s in RESUME_SECTIONS})
    return {k: v for k, v in fields.items() if k not in RESUME_FREE}


def _config_fields_v1(checkpoint: dict) -> dict[str, Any]:
    """What a format-1 checkpoint recorded, as RunConfig fields (those it did not record are absent).

    Format 1 stored the objective's effective config: the late-fusion baseline, which does not
    distil, recorded lambda_cd 0, and only CASD recorded tau (in its model config).
    """
    kind, model_config, metadata = checkpoint["model_kind"], checkpoint["model_config"], checkpoint["metadata"]
    objective, train = dict(checkpoint["objective_config"]), dict(checkpoint["train_config"])
    fields: dict[str, Any] = {"model.kind": kind}
    fields.update({f"model.{k}": v for k, v in model_config.items() if k not in ("feature_dims", "output_dim", "tau")})
    fields["objective.num_samples"] = objective["num_samples"]
    fields["objective.backend"] = objective["backend"]
    fields["objective.noise"] = train.pop("noise")
    if kind == "casd":
        fields["objective.lambda_cd"] = objective["lambda_cd"]
        fields["objective.tau"] = model_config["tau"]
    fields.update({f"train.{k}": v for k, v in train.items()})
    fields["data.dataset"], fields["data.task"] = metadata["dataset"], metadata["task"]
    if metadata.get("synthetic"):
        fields.update(flatten({"data": {"synthetic": metadata["synthetic"]}}))
    else:
        fields["data.path"] = metadata["source"]
    return flatten(fields)


def check_resumable(saved: dict, current: dict, path: str | os.PathLike) -> None:
    """Refuse to resume from ``saved`` (a read checkpoint) a run whose record (run_record) is
    ``current`` unless everything that shapes the trajectory matches; the error names each
    differing field. Fields a format-1 checkpoint did not record are not compared."""
    mine, theirs = _config_fields(current), _config_fields(saved)
    names = sorted(set(theirs) | (set(mine) if saved["format"] > 1 else set()))
    differences = [f"{name}: checkpoint {theirs.get(name)!r}, now {mine.get(name)!r}"
                   for name in names if theirs.get(name) != mine.get(name)]
    saved_data, current_data = flatten(saved["metadata"]), flatten(current["metadata"])
    differences += [f"data {key}: checkpoint {saved_data.get(key)!r}, now {current_data.get(key)!r}"
                    for key in sorted(set(saved_data) | set(current_data))
                    if saved_data.get(key) != current_data.get(key)]
    if differences:
        raise CheckpointError(f"--resume: {path} was written by a different run configuration:\n  "
                              + "\n  ".join(differences) + "\nrerun with the original settings or a new --out")


# --- does new data fit a trained model? -------------------------------------------------------------
def check_data_compatible(split: Split, metadata: dict, has_labels: bool, dataset: str | None = None,
                          task: str | None = None) -> list[str]:
    """Refuse data that do not fit the checkpoint, naming every difference (CheckpointError).

    ``dataset`` and ``task``, when given, must be the checkpoint's. Returns notes on harmless
    differences (other sequence lengths: the encoders take any length).
    """
    problems = []
    trained_dims = [int(d) for d in metadata["feature_dims"]]
    if list(split.feature_dims) != trained_dims:
        for name, got, want in zip(MODALITIES, split.feature_dims, trained_dims):
            if got != want:
                problems.append(f"{name} feature dimension: data {got}, checkpoint {want}")
    for flag, given in (("dataset", dataset), ("task", task)):
        if given is not None and given != metadata[flag]:
            problems.append(f"--{flag}: given {given!r}, checkpoint trained on {metadata[flag]!r}")
    if has_labels and metadata["task"] == "classification":
        classes = metadata["num_classes"]
        if split.labels.size and (split.labels.min() < 0 or split.labels.max() >= classes):
            problems.append(f"class labels in [{split.labels.min()}, {split.labels.max()}], "
                            f"checkpoint has {classes} classes")
    if problems:
        raise CheckpointError("data do not match the checkpoint (trained on "
                              f"{metadata.get('source')}):\n  " + "\n  ".join(problems))
    notes = []
    if list(split.seq_lens) != list(metadata.get("seq_lens", split.seq_lens)):
        notes.append(f"sequence lengths {list(split.seq_lens)} differ from training "
                     f"{metadata['seq_lens']} (text, audio, vision)")
    return notes
