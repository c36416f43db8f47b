"""``python -m casd.predict``: per-sample predictions of a trained checkpoint on new data.

    python -m casd.predict --checkpoint runs/x/best.pt --data features.pkl --split test \\
        --condition frame_0.5 --out predictions.csv

For every sample it writes the prediction (the score, or the class and its logits), the
uncertainty ubar = sum_k pi_k u_k (higher = less sure; NaN for the late-fusion baseline,
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

from casd.cli import CommandParser, run_command
from casd.device import resolve_device
from casd.errors import ConfigError
from casd.inference import PredictionResult, TrainedModel, load
from casd.modalities import COMBINATION_NAMES
from casd.outputs import check_writable_file, strict_json, write_text
from casd.vocab import DATASETS, SPLITS, TASKS

__all__ = ["build_parser", "prediction_rows", "run", "main"]


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
    p.add_argument("--eval-seed", type=int, default=None,
                   help="base seed of the frame-level masks (default: the run's recorded --eval-seed, so "
                   "frame_r reproduces its test masks)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="data set kind; must match the checkpoint's (default: the checkpoint's)")
    p.add_argument("--task", choices=TASKS,
                   help="must match the checkpoint's (default: the checkpoint's)")
    p.add_argument("--out", type=Path, help="output file (.csv or .json); default: print CSV to stdout")
    p.add_argument("--format", choices=("csv", "json"), help="default: from the --out suffix, else csv")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    return p


def _value(x: np.floating) -> float | None:
    """A float32 as the shortest decimal that reads back to it (-1.6, not -1.600000023841858)."""
    return None if math.isnan(x) else float(str(np.float32(x)))


def prediction_rows(result: PredictionResult, task: str) -> list[dict]:
    rows = []
    for i, sample_id in enumerate(result.ids):
        row = {"id": str(sample_id), "condition": result.condition}
        if result.labels is not None:
            row["label"] = _value(result.labels[i]) if task == "regression" else int(result.labels[i])
        output = result.output[i]
        if task == "classification":
            row["prediction"] = int(np.argmax(output))
            row.update({f"logit_{c}": _value(v) for c, v in enumerate(output)})
        else:
            row["prediction"] = _value(output)
        row["uncertainty"] = _value(result.uncertainty[i])
        row.update({f"weight_{c}": _value(w) for c, w in zip(COMBINATION_NAMES, result.weights[i])})
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
    trained: TrainedModel = load(args.checkpoint, resolve_device(args.device))
    if args.eval_seed is not None:  # before loading data: fail fast, naming the flag
        try:
            trained.conditions(args.eval_seed)
        except ConfigError as exc:
            raise ConfigError(f"--eval-seed {args.eval_seed}: {exc}") from exc
    try:
        condition = trained.condition(args.condition, args.eval_seed)
    except ConfigError as exc:
        raise ConfigError(f"--condition: {exc}") from exc
    data: Path | dict = args.data
    if args.synthetic:
        data = trained.synthetic_split(args.split)
        source = f"synthetic(seed={trained.metadata['synthetic']['seed']}) split {args.split!r}"
    result = trained.predict(data, condition, split=args.split, dataset=args.dataset, task=args.task,
                             batch_size=args.batch_size)
    if args.synthetic:
        result.source = source
    for note in result.notes:
        print(f"casd.predict: note: {note}", file=sys.stderr)
    metadata = trained.metadata
    header = {
        "checkpoint": str(args.checkpoint), "model_kind": trained.kind,
        "data": result.source, "condition": result.condition,
        "condition_seed": list(condition.seed) if condition is not None and condition.seed else None,
        "trained_on": {k: metadata.get(k) for k in ("source", "dataset", "task", "feature_dims",
                                                    "missing_protocol", "missing_rate")},
        "trained_with": trained.provenance,
        "metrics": result.metrics,
    }
    rows = prediction_rows(result, trained.task)
    fmt = args.format or ("json" if args.out is not None and args.out.suffix == ".json" else "csv")
    if args.out is None:
        write_rows(rows, header, fmt, sys.stdout)
    else:  # atomically: an interrupted write leaves the old file (or none), never half a table
        args.out.parent.mkdir(parents=True, exist_ok=True)
        text = io.StringIO(newline="")
        write_rows(rows, header, fmt, text)
        write_text(args.out, text.getvalue())
    summary = f"casd.predict: {len(rows)} samples of {result.source} under {result.condition}"
    if result.metrics:
        summary += " | " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(summary + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return {**header, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """``python -m casd.predict``: 0, or 2 with one line naming what to fix (casd.cli)."""
    return run_command("casd.predict", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
