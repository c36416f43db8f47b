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
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from casd.data import Split, SyntheticConfig
from casd.errors import CheckpointError, ConfigError
from casd.modalities import MODALITIES
from casd.outputs import atomic_write
from casd.registry import build_model, model_kind
from casd.serialize import flatten, from_dict

__all__ = ["BEFORE_ISSUE_11", "recorded_before_issue_11", "FORMAT", "RESUME_SAFE", "atomic_save", "run_record", "read_checkpoint", "load_model", "check_resumable",
           "check_data_compatible", "recorded_synthetic"]

FORMAT = 2
# Keys every checkpoint of every format has (what prediction needs).
REQUIRED = ("model", "model_kind", "model_config", "metadata")
# The RunConfig fields a resumed run must share with its checkpoint: everything that shapes the
# training trajectory. Device, output and these train fields may differ.
RESUME_SECTIONS = ("data", "model", "objective", "train", "evaluation")
RESUME_FREE = ("train.progress", "train.eval_batch_size")
# Settings a resumed run may change (each change is logged): they steer the epochs still to
# come, not what the checkpoint holds. A run that failed with non-finite steps can go on with
# a lower learning rate; a finished one can train for more epochs or with more patience.
# (casd.trainer.Trainer.resume applies them to the restored optimiser, schedule and state.)
RESUME_SAFE = ("train.lr", "train.epochs", "train.patience", "train.max_bad_steps")


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to a temporary file, fsync, rename, fsync the folder (casd.outputs.atomic_write):
    a crash never leaves a torn checkpoint, and a finished write survives a power cut."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


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
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint (best.pt or last.pt of a casd.train run)")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {path}")
    _check_records(path)
    try:
        # weights_only: torch's restricted unpickler; a checkpoint can hold tensors and plain values
        # only, so a hostile file cannot run code. (Its warnings about a file's pickle protocol
        # are noise next to the error below.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a torn, foreign or hostile file
        raise CheckpointError(f"{path} is not a readable checkpoint ({_load_failure(exc)}); "
                              "it is torn, corrupt or not a casd.train checkpoint") from exc
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(checkpoint, dict) or k not in checkpoint]
        raise CheckpointError(f"{path} is not a casd.train checkpoint (no {', '.join(map(repr, missing))})")
    checkpoint.setdefault("format", 1)
    if not isinstance(checkpoint["format"], int) or not isinstance(checkpoint["metadata"], dict):
        raise CheckpointError(f"{path} is not a casd.train checkpoint (format {checkpoint['format']!r})")
    if checkpoint["format"] > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {checkpoint['format']}; this casd reads "
                              f"formats 1-{FORMAT}: update casd")
    return checkpoint


def _load_failure(exc: Exception) -> str:
    """torch.load's error in a few words: its messages run to many lines, and a refusal by the
    weights_only unpickler explains weights_only at length before it says what it refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        refused = next((line for line in lines[1:] if line.startswith("Unsupported")), "")
        return f"torch's weights_only loader refused it{': ' + refused[:150] if refused else ''}; nothing was executed"
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _check_records(path: Path) -> None:
    """Refuse a checkpoint whose zip records fail their CRC-32. torch.save writes a CRC for every
    record, but torch.load does not check them: a flipped byte inside tensor data would load
    as silently wrong weights. (Files that are not zip archives are left to torch.load.)"""
    is_zip = False
    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if is_zip:  # torch.save's format, cut short or damaged; torch.load's own error is less clear
            raise CheckpointError(f"{path} is not a readable checkpoint (a zip archive cut short or damaged: "
                                  f"{exc}); it is torn or corrupt") from exc
        return  # not torch.save's zip format (legacy or foreign): torch.load says what it is
    if bad is not None:
        raise CheckpointError(f"{path} is not a readable checkpoint (record {bad} fails its CRC-32 check); "
                              "it is corrupt")


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and the checkpoint's record of how it was trained."""
    checkpoint = read_checkpoint(path, device)
    try:
        model = build_model(checkpoint["model_kind"], checkpoint["model_config"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: its model_kind {checkpoint['model_kind']!r} and model_config do not "
                              f"build a model ({type(exc).__name__}: {exc})") from exc
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
        raise CheckpointError(f"{path}: weights do not fit a {checkpoint['model_kind']} model "
                              f"of its recorded config: {reason}") from exc
    return model.to(device).eval(), checkpoint


def recorded_synthetic(metadata: dict) -> SyntheticConfig | None:
    """The synthetic data set a checkpoint was trained on (None for a data file), from its record."""
    if not metadata.get("synthetic"):
        return None
    return from_dict(SyntheticConfig, metadata["synthetic"], where="checkpoint metadata.synthetic")


# The fields the issue-11 design added (formulation §8), with the values that reproduce what casd
# computed before they existed. A run recorded before then ran the first formulation: reading its
# config with today's defaults would misdescribe it.
BEFORE_ISSUE_11: dict[str, dict[str, Any]] = {
    "model": {"frame_scale": False, "availability": "mask", "likelihood": "point"},
    "objective": {"distill": "mixture", "cd_per_dim": False, "lambda_warmup": 0.0, "task_input": "samples"},
}


def recorded_before_issue_11(data: dict, network: dict | None) -> dict:
    """A run's recorded config values (RunConfig's JSON form), with the fields it predates set as it ran.

    A run predates them when its recorded network config ``network`` (a checkpoint's
    model_config) has no ``frame_scale`` (every network config has had it since). Its missing fields then take ``BEFORE_ISSUE_11``, tau_rows = its
    tau (the one temperature it had), and lambda_cd, tau and the training missing rate the
    defaults of that time (0.01, 1.0, 0.7). A recorded run without a ``calibration`` section
    predates held-out calibration and ran none (epochs 0), one whose calibration has no ``fit``
    refit the heads; one without ``objective.task_weights``
    weighed its task loss by pi ("confidence"); one without ``model.encoder`` ran the transformer
    encoder on turning synthetic data. A hand-written file (no network
    config) is returned as is."""
    if isinstance(network, dict) and "calibration" not in data:
        # recorded before held-out calibration existed (casd.calibration): it did not calibrate
        data = {**data, "calibration": {"epochs": 0}}
    elif isinstance(network, dict) and "fit" not in (data["calibration"] or {}):
        # recorded before the reliability shift (casd.reliability): it refit the heads
        data = {**data, "calibration": {"fit": "heads", **(data["calibration"] or {})}}
    if isinstance(network, dict) and "task_weights" not in (data.get("objective") or {}):
        # recorded before the task loss could weigh components uniformly: it weighed them by pi
        data = {**data, "objective": {**(data.get("objective") or {}), "task_weights": "confidence"}}
    if isinstance(network, dict) and "encoder" not in (data.get("model") or {}):
        # recorded before the easy-encoder variant: the transformer encoder on turning data
        data = {**data, "model": {**(data.get("model") or {}), "encoder": "transformer"}}
        synthetic = (data.get("data") or {}).get("synthetic")
        if isinstance(synthetic, dict) and "turning" not in synthetic:
            data = {**data, "data": {**data["data"], "synthetic": {**synthetic, "turning": True}}}
    if not isinstance(network, dict) or "frame_scale" in network:
        return data
    filled = {name: dict(data.get(name) or {}) for name in ("model", "objective", "train")}
    for name, values in BEFORE_ISSUE_11.items():
        filled[name] = {**values, **filled[name]}
    filled["objective"].setdefault("lambda_cd", 0.01)
    filled["objective"].setdefault("tau", 1.0)
    filled["objective"].setdefault("tau_rows", filled["objective"]["tau"])
    filled["train"].setdefault("missing_rate", 0.7)
    return {**data, **filled}


# --- does a run fit its checkpoint? ---------------------------------------------------------------
def _config_fields(checkpoint: dict) -> dict[str, Any]:
    """The RunConfig fields a checkpoint records that a resumed run must share."""
    if checkpoint["format"] == 1:
        fields = _config_fields_v1(checkpoint)
    else:
        config = recorded_before_issue_11(checkpoint["config"], checkpoint["model_config"])
        fields = flatten({s: config[s] for s in RESUME_SECTIONS})
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
        fields["objective.tau"] = fields["objective.tau_rows"] = model_config["tau"]
    # format 1 predates the issue-11 fields: it ran them as BEFORE_ISSUE_11 has them
    fields.update({f"{section}.{k}": v for section, values in BEFORE_ISSUE_11.items() for k, v in values.items()
                   if section == "model" or kind == "casd"})
    fields.update({f"train.{k}": v for k, v in train.items()})
    fields["data.dataset"], fields["data.task"] = metadata["dataset"], metadata["task"]
    if metadata.get("synthetic"):
        fields.update(flatten({"data": {"synthetic": metadata["synthetic"]}}))
    else:
        fields["data.path"] = metadata["source"]
    return flatten(fields)


# Data-description fields added after runs were recorded without them, with the value those runs
# had (their config fields are filled by recorded_before_issue_11): resuming such a run compares
# the checkpoint's metadata as if it had recorded them.
METADATA_ADDED_SINCE: dict[str, Any] = {"synthetic.turning": True}  # the easy-encoder variant (issue 11)


def check_resumable(saved: dict, current: dict, path: str | os.PathLike) -> list[tuple[str, Any, Any]]:
    """Refuse to resume from ``saved`` (a read checkpoint) a run whose record (run_record) is
    ``current`` unless everything that shapes the trajectory matches; the error names each
    differing field. Fields a format-1 checkpoint did not record are not compared.

    Returns the ``RESUME_SAFE`` settings that differ, as (field, checkpoint's, now): the
    caller applies and logs them."""
    try:
        mine, theirs = _config_fields(current), _config_fields(saved)
        saved_data, current_data = flatten(saved["metadata"]), flatten(current["metadata"])
        saved_data = {**METADATA_ADDED_SINCE, **saved_data}
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"--resume: {path} does not record its run's settings ({type(exc).__name__}: "
                              f"{exc}); it is not a casd.train checkpoint") from exc
    names = sorted(set(theirs) | (set(mine) if saved["format"] > 1 else set()))
    changed = [name for name in names if theirs.get(name) != mine.get(name)]
    differences = [f"{name}: checkpoint {theirs.get(name)!r}, now {mine.get(name)!r}"
                   for name in changed if name not in RESUME_SAFE]
    differences += [f"data {key}: checkpoint {saved_data.get(key)!r}, now {current_data.get(key)!r}"
                    for key in sorted(set(saved_data) | set(current_data))
                    if saved_data.get(key) != current_data.get(key)]
    if differences:
        raise CheckpointError(f"--resume: {path} was written by a different run configuration: "
                              + "; ".join(differences) + "; rerun with the original settings (only "
                              + ", ".join(RESUME_SAFE) + " may change) or a new --out")
    return [(name, theirs.get(name), mine.get(name)) for name in changed if name in RESUME_SAFE]


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
                              f"{metadata.get('source')}): " + "; ".join(problems))
    notes = []
    if list(split.seq_lens) != list(metadata.get("seq_lens", split.seq_lens)):
        notes.append(f"sequence lengths {list(split.seq_lens)} differ from training "
                     f"{metadata['seq_lens']} (text, audio, vision)")
    return notes
