"""``python -m casd.train``: train a model and report its robustness to missing modalities.

    command line (casd.flags) or --config file -> RunConfig (casd.config) -> run(config):
    data -> model and objective (casd.registry) -> Trainer (casd.trainer) -> test evaluation

With no arguments it trains CASD on the embedded synthetic data set and evaluates it on the
test split under the frame-level sweep r = 0.0..0.9 and all 7 modality combinations; see
``--help`` (casd.flags) for the flags. Under torchrun every rank runs ``run``; see
casd/distributed.py.
"""
from __future__ import annotations

import json
import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from casd.checkpoint import read_checkpoint, run_record
from casd.config import RECORD_KEY, RunConfig
from casd.data import DataDescription, Split, generate_synthetic, load_mmsa, split_from_mmsa, validate_splits
from casd.device import resolve_device, set_threads
from casd.distributed import DistContext, init_distributed, shutdown_distributed
from casd.errors import CheckpointError, ConfigError, UserError
from casd.evaluate import (evaluate_conditions, selection_metric, summarise, test_conditions,
                           validation_conditions)
from casd.flags import config_from_argv
from casd.kernels import BackendUnavailableError
from casd.kernels.runtime import triton_ops
from casd.provenance import arrays_sha256, file_sha256, provenance
from casd.predictions import save_predictions
from casd.registry import build_model, build_objective
from casd.report import describe_source, format_table, headline_metrics, model_label, plot_robustness
from casd.serialize import to_dict
from casd.trainer import Trainer
from casd.vocab import SPLITS

__all__ = ["run", "main", "load_splits", "describe_data", "build_model_and_objective", "save_predictions"]

log = logging.getLogger("casd")


def setup_logging(out_dir: Path, context: DistContext = DistContext()) -> None:
    """Rank 0 logs to stdout and train.log; other ranks print warnings only, tagged with the rank."""
    log.handlers.clear()
    if not context.is_main:
        log.setLevel(logging.WARNING)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s rank {context.rank} %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        return
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(out_dir / "train.log")):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def load_splits(config: RunConfig) -> tuple[dict[str, Split], str, dict]:
    """The train/valid/test splits of the run's data, a description of where they came from, and
    the run's provenance (casd.provenance: code versions and the data's SHA-256)."""
    data = config.data
    if data.path is None:
        raw = generate_synthetic(data.synthetic)
        splits = {s: split_from_mmsa(raw[s], data.task) for s in SPLITS}
        return splits, f"synthetic(seed={data.synthetic.seed})", provenance(arrays_sha256(raw), "generated arrays")
    return load_mmsa(data.path, data.task), str(data.path), provenance(file_sha256(data.path), "file")


def describe_data(config: RunConfig, source: str, description: DataDescription) -> dict:
    """What the model was trained on; checkpoints carry it so casd.predict can check new data."""
    data = config.data
    return {
        "source": source,
        "dataset": data.dataset,
        "task": data.task,
        **description.as_meta(),
        "missing_protocol": config.train.missing_protocol,
        "missing_rate": config.train.missing_rate,
        "synthetic": asdict(data.synthetic) if data.path is None else None,
    }


def build_model_and_objective(config: RunConfig, meta: dict, context: DistContext = DistContext()):
    """The run's model (its kind's network for the described data) and the objective that trains it."""
    network = config.network_config(tuple(meta["feature_dims"]), meta.get("num_classes", 1))
    model = build_model(config.model.kind, network)
    return model, build_objective(config.model.kind, config.objective, config.data.task, context)


def run(config: RunConfig) -> dict:
    """Train, select on validation, evaluate on test; write everything under config.output.dir.

    Under torchrun every rank runs this; rank 0 alone logs and writes files, and every rank
    returns the same report.
    """
    started = time.perf_counter()
    context, device_name = init_distributed(config.device.name)
    device = resolve_device(device_name)
    set_threads(config.device.threads)
    backend = config.objective.backend
    if backend == "triton":
        triton_ops(device)  # fail now, with a clear message, rather than after data loading
    if context.enabled and config.output.dir is None:
        raise ConfigError("under torchrun pass --out: each process would pick its own timestamped folder")
    out_dir = config.output.dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    config = replace(config, output=replace(config.output, dir=out_dir))  # config.json records where
    if config.output.resume and not (out_dir / "last.pt").exists():
        raise CheckpointError(f"--resume: no checkpoint {out_dir / 'last.pt'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir, context)
    torch.manual_seed(config.train.seed)

    splits, source, origin = load_splits(config)
    # every data problem is refused here, before a model is built
    meta = describe_data(config, source, validate_splits(splits, config.data.dataset, config.data.task, source))
    model, objective = build_model_and_objective(config, meta, context)
    dataset, task = config.data.dataset, config.data.task
    selection = selection_metric(task)
    valid_conditions = validation_conditions(config.evaluation.seed)
    record = run_record(to_dict(config), model, meta, origin)
    trainer = Trainer(model, objective, splits["train"], splits["valid"], valid_conditions, config.train,
                      dataset, task, device, out_dir, record, selection, context)
    snapshot = {**record["config"], RECORD_KEY: {
        "argv": sys.argv, "model_kind": record["model_kind"], "model_config": record["model_config"],
        "data": meta, "world_size": context.world_size, "provenance": origin}}
    if context.is_main:
        (out_dir / "config.json").write_text(json.dumps(snapshot, indent=2))
    log.info("data %s: %s samples, feature dims %s", source, meta["sizes"], meta["feature_dims"])
    log.info("model %s: %d parameters; backend %s on %s, amp %s, %d process(es); output %s", config.model.kind,
             sum(p.numel() for p in model.parameters()), backend, device, trainer.amp_dtype,
             context.world_size, out_dir)
    if config.output.resume:
        trainer.resume(out_dir / "last.pt")

    state = trainer.fit()
    model.load_state_dict(read_checkpoint(out_dir / "best.pt", device)["model"])
    log.info("best epoch %d (validation %s %.4f); evaluating on test", state.best_epoch, selection, state.best_score)

    names = headline_metrics(dataset, task)
    results = evaluate_conditions(model, splits["test"], test_conditions(config.evaluation.seed), dataset,
                                  task, device, config.train.eval_batch_size, trainer.amp_dtype,
                                  context=context)
    summary = summarise(results)
    report = {
        "config": snapshot,
        "selection": {"metric": selection, "best_epoch": state.best_epoch, "valid_score": state.best_score,
                      "valid_conditions": [asdict(c) for c in valid_conditions]},
        "history": state.history,
        "test": summary,
        "provenance": origin,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                        "world_size": context.world_size, "threads": torch.get_num_threads()},
        "seconds": time.perf_counter() - started,
    }
    if context.is_main:
        table = format_table(summary, names)
        print("\n" + table + "\n", flush=True)
        (out_dir / "results.txt").write_text(table + "\n")
        save_predictions(out_dir / "predictions.npz", results, splits["test"].ids)
        plot_robustness(summary, names, out_dir / "robustness.png",
                        title=f"{model_label(config.model.kind)} on {describe_source(source)}, test split")
        (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=float))
        log.info("wrote %s (results.json, results.txt, predictions.npz, robustness.png/.pdf, best.pt) in %.0fs",
                 out_dir, report["seconds"])
    context.barrier()
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        run(config_from_argv(argv))  # argparse reports its own errors (exit 2)
    except BackendUnavailableError as exc:
        print(f"casd.train: --fused is not available here: {exc}", file=sys.stderr)
        return 2
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"casd.train: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
