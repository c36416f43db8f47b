"""``python -m casd.predict``: per-sample predictions of a trained checkpoint on new data.

    python -m casd.predict --checkpoint runs/x/best.pt --data features.pkl --split test \\
        --condition frame_0.5 --out predictions.csv

For every sample it writes the prediction (the score, or the class and its logits), the
confidence ubar = sum_k pi_k u_k (lower = more confident; NaN for the late-fusion baseline,
which has none) and the component weights pi over the 7 modality combinations, as CSV or JSON
(chosen by --format or the --out suffix). When the data carry labels it also prints metrics.

The checkpoint records what the model was trained on (feature dimensions, data set kind,
task, training missingness); data that do not fit it are refused with an error naming what
differs. ``--condition`` applies one of the evaluation conditions first (``frame_0.0`` ..
``frame_0.9`` with the seeds of ``--eval-seed``, or ``modality_t`` .. ``modality_tav``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from casd.checkpoint import check_data_compatible, load_model, recorded_synthetic
from casd.cli import CommandParser, run_command
from casd.data import (EvalCondition, InvalidDataError, Split, apply_condition, generate_synthetic, restricted_load,
                       split_from_mmsa, validate_split)
from casd.device import resolve_device
from casd.errors import CheckpointError, ConfigError
from casd.evaluate import predict_split, test_conditions
from casd.metrics import compute_metrics
from casd.modalities import COMBINATION_NAMES
from casd.outputs import atomic_write, check_writable_file, strict_json
from casd.vocab import DATASETS, SPLITS, TASKS

__all__ = ["load_data", "parse_condition", "predict", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m casd.predict", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of a casd.train run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="MMSA feature pickle: a dict of splits, or one split's dict")
    source.add_argument("--synthetic", action="store_true",
                        help="the synthetic data set the checkpoint was trained on, regenerated from its recorded seed")
    p.add_argument("--split", choices=SPLITS, default="test", help="split of a multi-split file")
    p.add_argument("--condition", default=None,
                   help="evaluation condition to apply: frame_0.0 .. frame_0.9 or modality_<t|a|v|ta|tv|av|tav>")
    p.add_argument("--eval-seed", type=int, default=1111, help="base seed of the frame-level masks (as casd.train)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="data set kind; must match the checkpoint's (default: the checkpoint's)")
    p.add_argument("--task", choices=TASKS,
                   help="must match the checkpoint's (default: the checkpoint's)")
    p.add_argument("--out", type=Path, help="output file (.csv or .json); default: print CSV to stdout")
    p.add_argument("--format", choices=("csv", "json"), help="default: from the --out suffix, else csv")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    return p


def _raw_split(path: Path, split: str) -> dict:
    data = restricted_load(path)
    if not isinstance(data, dict):
        raise InvalidDataError(f"{path}: expected a dict (of splits, or of one split's arrays), got {type(data).__name__}")
    if "text" in data:  # one split's arrays at the top level
        return data
    if split not in data:
        raise InvalidDataError(f"{path}: no split {split!r} (present: {sorted(map(str, data))}); choose one with --split")
    if not isinstance(data[split], dict):
        raise InvalidDataError(f"{path} split {split!r}: expected a dict of arrays, got {type(data[split]).__name__}")
    return data[split]


def load_data(args: argparse.Namespace, metadata: dict, task: str) -> tuple[Split, bool, str]:
    """(split, whether it has labels, a description of where it came from); the split is
    checked as casd.train checks its splits (casd.data.validate_split), against the data set
    kind and classes the checkpoint was trained on."""
    if args.synthetic:
        config = recorded_synthetic(metadata)
        if config is None:
            raise ConfigError(f"--synthetic: the checkpoint was trained on {metadata.get('source')}, "
                              "not on the synthetic data set; pass --data")
        raw = generate_synthetic(config)[args.split]
        where = f"synthetic(seed={config.seed}) split {args.split!r}"
    else:
        raw = dict(_raw_split(args.data, args.split))  # a missing file or a folder: one line (restricted_load)
        where = f"{args.data} split {args.split!r}"
    label_key = f"{task}_labels"
    has_labels = label_key in raw
    if not has_labels:  # unlabelled new data: placeholder labels, no metrics
        text = raw.get("text")
        n = len(text) if isinstance(text, np.ndarray) and text.ndim else 0
        raw[label_key] = np.zeros(n, dtype=np.float32 if task == "regression" else np.int64)
    split = split_from_mmsa(raw, task, where=where)
    validate_split(split, where, args.dataset or metadata["dataset"], task, metadata.get("num_classes"), has_labels)
    return split, has_labels, where


def parse_condition(name: str | None, eval_seed: int) -> EvalCondition | None:
    if name is None or name == "none":
        return None
    try:
        conditions = {c.name: c for c in test_conditions(eval_seed)}
    except ValueError as exc:
        raise ConfigError(f"--eval-seed {eval_seed}: {exc}") from exc
    if name not in conditions:
        raise ConfigError(f"--condition: unknown condition {name!r}; choose none or one of {sorted(conditions)}")
    return conditions[name]


def predict(model: torch.nn.Module, split: Split, condition: EvalCondition | None, device: torch.device,
            batch_size: int = 256) -> dict[str, np.ndarray]:
    """output, confidence, weights for every sample of ``split`` under ``condition``."""
    present = None
    if condition is not None:
        split, present = apply_condition(split, condition)
    return predict_split(model, split, present, device, batch_size)


def _value(x: np.floating) -> float | None:
    """A float32 as the shortest decimal that reads back to it (-1.6, not -1.600000023841858)."""
    return None if math.isnan(x) else float(str(np.float32(x)))


def prediction_rows(split: Split, predicted: dict[str, np.ndarray], has_labels: bool, task: str,
                    condition: str) -> list[dict]:
    rows = []
    for i in range(split.num_samples):
        row = {"id": str(split.ids[i]), "condition": condition}
        if has_labels:
            row["label"] = _value(split.labels[i]) if task == "regression" else int(split.labels[i])
        output = predicted["output"][i]
        if task == "classification":
            row["prediction"] = int(np.argmax(output))
            row.update({f"logit_{c}": _value(v) for c, v in enumerate(output)})
        else:
            row["prediction"] = _value(output)
        row["confidence"] = _value(predicted["confidence"][i])
        row.update({f"weight_{c}": _value(w) for c, w in zip(COMBINATION_NAMES, predicted["weights"][i])})
        rows.append(row)
    return rows


def write_rows(rows: list[dict], header: dict, fmt: str, out) -> None:
    if fmt == "json":  # strict JSON: an undefined metric is null
        json.dump(strict_json({**header, "predictions": rows}), out, indent=1, allow_nan=False)
        out.write("\n")
        return
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    writer.writerows({k: ("nan" if v is None else v) for k, v in row.items()} for row in rows)


def run(args: argparse.Namespace) -> dict:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out is not None:
        check_writable_file(args.out)  # before any work
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.checkpoint, device)
    metadata = checkpoint["metadata"]
    missing = [key for key in ("task", "dataset", "feature_dims") if key not in metadata]
    if missing:
        raise CheckpointError(f"{args.checkpoint}: its metadata lack {missing}; it is not a casd.train checkpoint")
    task = metadata["task"]
    condition = parse_condition(args.condition, args.eval_seed)  # before loading data: fail fast
    split, has_labels, where = load_data(args, metadata, args.task or task)
    for note in check_data_compatible(split, metadata, has_labels, args.dataset, args.task):
        print(f"casd.predict: note: {note}", file=sys.stderr)
    predicted = predict(model, split, condition, device, args.batch_size)
    condition_name = condition.name if condition is not None else "none"
    bad = ~np.isfinite(predicted["output"]).reshape(split.num_samples, -1).all(axis=1)
    if bad.any():  # finite, validated features can still overflow the model: features on another scale?
        what = (f"{where}: the model's outputs are not finite for {int(bad.sum())} of {len(bad)} samples "
                f"(first: {split.ids[int(np.flatnonzero(bad)[0])]}); are the features on the scale it was trained on?")
        if has_labels:
            raise InvalidDataError(what + " (no metrics can be computed)")
        print(f"casd.predict: note: {what}", file=sys.stderr)
    metrics = compute_metrics(predicted["output"], split.labels, metadata["dataset"], task) if has_labels else None
    header = {
        "checkpoint": str(args.checkpoint), "model_kind": checkpoint.get("model_kind", "casd"),
        "data": where, "condition": condition_name,
        "condition_seed": list(condition.seed) if condition is not None and condition.seed else None,
        "trained_on": {k: metadata.get(k) for k in ("source", "dataset", "task", "feature_dims",
                                                    "missing_protocol", "missing_rate")},
        "metrics": metrics,
    }
    rows = prediction_rows(split, predicted, has_labels, task, condition_name)
    fmt = args.format or ("json" if args.out is not None and args.out.suffix == ".json" else "csv")
    if args.out is None:
        write_rows(rows, header, fmt, sys.stdout)
    else:  # atomically: an interrupted write leaves the old file (or none), never half a table
        args.out.parent.mkdir(parents=True, exist_ok=True)

        def write(handle) -> None:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            write_rows(rows, header, fmt, text)
            text.flush()
            text.detach()

        atomic_write(args.out, write)
    summary = f"casd.predict: {len(rows)} samples of {where} under {condition_name}"
    if metrics:
        summary += " | " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    print(summary + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return {**header, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """``python -m casd.predict``: 0, or 2 with one line naming what to fix (casd.cli)."""
    return run_command("casd.predict", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
