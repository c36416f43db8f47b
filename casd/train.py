"""``python -m casd.train``: train a model and report its robustness to missing modalities.

    command line (casd.flags) or --config file -> RunConfig (casd.config) -> run(config):
    data -> model and objective (casd.registry) -> Trainer (casd.trainer) -> test evaluation

With no arguments it trains CASD on the embedded synthetic data set and evaluates it on the
test split under the frame-level sweep r = 0.0..0.9 and all 7 modality combinations; see
``--help`` (casd.flags) for the flags. Under torchrun every rank runs ``run``; see
casd/distributed.py.
"""
from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from casd.calibration import calibrate_uncertainty
from casd.checkpoint import atomic_save, read_checkpoint, run_record
from casd.cli import run_command
from casd.config import RECORD_KEY, RunConfig
from casd.data import DataDescription, Split, generate_synthetic, load_mmsa, split_from_mmsa, validate_splits
from casd.device import resolve_amp, resolve_device, set_threads
from casd.distributed import DistContext, init_distributed, shutdown_distributed
from casd.errors import ConfigError
from casd.evaluate import (evaluate_conditions, selection_metric, summarise, test_conditions,
                           validation_conditions)
from casd.flags import config_from_argv
from casd.kernels import BackendUnavailableError
from casd.kernels.runtime import triton_ops
from casd.outputs import (RESULT_FILES, check_output_dir, prepare_output_dir, remove_files, strict_json,
                          write_json, write_text)
from casd.predictions import save_predictions
from casd.provenance import arrays_sha256, file_sha256, provenance
from casd.registry import build_model, build_objective
from casd.report import (describe_source, format_table, format_uncertainty_table, headline_metrics, model_label,
                         plot_robustness)
from casd.serialize import to_dict
from casd.trainer import Trainer
from casd.uncertainty_report import synthetic_oracle, uncertainty_report
from casd.vocab import SPLITS

__all__ = ["run", "main", "load_splits", "describe_data", "build_model_and_objective", "save_predictions"]

log = logging.getLogger("casd")


def setup_logging(out_dir: Path, context: DistContext = DistContext()) -> None:
    """Rank 0 logs to stdout and train.log; other ranks print warnings only, tagged with the rank."""
    for handler in log.handlers:  # a previous run's (the study runs many): close its train.log
        handler.close()
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
    returns the same report (as results.json holds it: strict JSON values).

    Everything that can be refused is checked before the output folder is created or changed
    (casd.outputs): the flags, the folder itself, the data, the model, and a resumed run's
    checkpoint; a refused run leaves the folder as it was.
    """
    started = time.perf_counter()
    context, device_name = init_distributed(config.device.name)
    device = resolve_device(device_name)
    resolve_amp(config.train.amp, device)  # e.g. --amp fp16 without a GPU: refused before any work
    set_threads(config.device.threads)
    backend = config.objective.backend
    if backend == "triton":
        try:
            triton_ops(device)  # fail now, with a clear message, rather than after data loading
        except BackendUnavailableError as exc:
            raise ConfigError(f"--fused is not available here: {exc}") from exc
    if context.enabled and config.output.dir is None:
        raise ConfigError("under torchrun pass --out: each process would pick its own timestamped folder")
    out_dir = config.output.dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    config = replace(config, output=replace(config.output, dir=out_dir))  # config.json records where
    check_output_dir(out_dir, config.output.resume, config.output.overwrite)  # reads only
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

    # A resumed run's checkpoint must fit this config: checked before the folder is touched too.
    resumable = trainer.read_resumable(out_dir / "last.pt") if config.output.resume else None

    # Validated: only now is the folder created (with --overwrite: the old run's files removed).
    context.barrier()  # every rank has checked the folder before rank 0 changes it
    removed = prepare_output_dir(out_dir, config.output.overwrite) if context.is_main else []
    context.barrier()
    setup_logging(out_dir, context)
    if removed:
        log.info("--overwrite: removed %s of the previous run in %s", ", ".join(removed), out_dir)
    log.info("data %s: %s samples, feature dims %s", source, meta["sizes"], meta["feature_dims"])
    log.info("model %s: %d parameters; backend %s on %s, amp %s, %d process(es); output %s", config.model.kind,
             sum(p.numel() for p in model.parameters()), backend, device, trainer.amp_dtype,
             context.world_size, out_dir)
    if resumable is not None:
        trainer.restore(*resumable)
        if context.is_main:  # the results will be rewritten, maybe for other epochs: none meanwhile
            remove_files(out_dir, RESULT_FILES)
    if context.is_main:
        write_json(out_dir / "config.json", snapshot)

    state = trainer.fit()
    best = read_checkpoint(out_dir / "best.pt", device)
    model.load_state_dict(best["model"])
    log.info("best epoch %d (validation %s %.4f)", state.best_epoch, selection, state.best_score)
    # Held-out calibration of u (formulation §4), once per best.pt: a resumed run whose best.pt
    # holds it already does not calibrate twice.
    calibration = best.get("calibration")
    if calibration is None:
        calibration = calibrate_uncertainty(model, splits["valid"], trainer.missingness, config.calibration, task,
                                            device, config.train.seed)
        if calibration is not None and context.is_main:
            atomic_save({**best, "model": model.state_dict(), "calibration": calibration}, out_dir / "best.pt")
        context.barrier()
    log.info("evaluating on test")

    names = headline_metrics(dataset, task)
    results = evaluate_conditions(model, splits["test"], test_conditions(config.evaluation.seed), dataset,
                                  task, device, config.train.eval_batch_size, trainer.amp_dtype,
                                  context=context)
    summary = summarise(results)
    # Does ubar rank the errors? The oracle's figures beside the model's on synthetic data (formulation §7).
    oracle = synthetic_oracle(config.data.synthetic if config.data.path is None else None, "test",
                              [r.condition for r in results])
    uncertainty = uncertainty_report(results, task, oracle)
    report = {
        "config": snapshot,
        "selection": {"metric": selection, "best_epoch": state.best_epoch, "valid_score": state.best_score,
                      "valid_conditions": [asdict(c) for c in valid_conditions]},
        "calibration": calibration,
        "history": state.history,
        "test": summary,
        "uncertainty": uncertainty,
        "provenance": origin,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                        "world_size": context.world_size, "threads": torch.get_num_threads()},
        "seconds": time.perf_counter() - started,
    }
    report = strict_json(report)  # undefined metrics (NaN) are null, in the file and for callers
    if context.is_main:
        table = format_table(summary, names)
        if uncertainty is not None:
            table += "\n\n" + format_uncertainty_table(uncertainty)
        print("\n" + table + "\n", flush=True)
        # Atomic writes, results.json last: it marks a finished run (casd.outputs).
        write_text(out_dir / "results.txt", table + "\n")
        save_predictions(out_dir / "predictions.npz", results, splits["test"].ids)
        plot_robustness(summary, names, out_dir / "robustness.png",
                        title=f"{model_label(config.model.kind)} on {describe_source(source)}, test split",
                        uncertainty=uncertainty)
        write_json(out_dir / "results.json", report)
        log.info("wrote %s (results.json, results.txt, predictions.npz, robustness.png/.pdf, best.pt) in %.0fs",
                 out_dir, report["seconds"])
    context.barrier()
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m casd.train``: 0, or 2 with one line naming what to fix (casd.cli)."""
    return run_command("casd.train", lambda: run(config_from_argv(argv)), cleanup=shutdown_distributed)


if __name__ == "__main__":
    sys.exit(main())
