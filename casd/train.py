"""``python -m casd.train``: train CASD and report its robustness to missing modalities.

With no arguments it trains on the embedded synthetic data set (generated from a seed) and
evaluates on its test split under the frame-level sweep r = 0.0..0.9 and all 7 modality
combinations. ``--data PATH.pkl`` trains on an MMSA feature pickle instead. ``--model
late_fusion`` trains the late-fusion baseline by the same protocol.

Several processes: ``torchrun --nproc_per_node=N -m casd.train ...`` (DistributedDataParallel,
NCCL on GPUs, gloo on CPUs; --batch-size stays the global batch; see casd/distributed.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from casd.baseline import LateFusionConfig, LateFusionModel, LateFusionObjective
from casd.data import (SyntheticConfig, Split, evaluation_conditions, generate_synthetic, load_mmsa, split_from_mmsa,
                        validate_splits)
from casd.distributed import DistContext, init_distributed, shutdown_distributed
from casd.evaluate import ConditionResult, evaluate_conditions, summarise
from casd.kernels import BackendUnavailableError
from casd.kernels.runtime import triton_ops
from casd.model import CASDModel, ModelConfig
from casd.objective import CASDObjective, ObjectiveConfig
from casd.report import format_table, headline_metrics, plot_robustness
from casd.trainer import TrainConfig, Trainer, resolve_device

log = logging.getLogger("casd")

SPLITS = ("train", "valid", "test")
# Validation uses its own seeds (never the test ones) and a coarser sweep to stay cheap.
VALID_SEED_OFFSET = 100_000
VALID_RATES = (0.0, 0.3, 0.6, 0.9)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m casd.train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="MMSA feature pickle (aligned_50.pkl, unaligned_50.pkl, ...); "
                      "default: the embedded synthetic data set")
    data.add_argument("--dataset", choices=("mosi", "mosei", "sims"), default="mosi",
                      help="data set kind: selects the metric family (MOSI/MOSEI or SIMS)")
    data.add_argument("--task", choices=("regression", "classification"), default="regression",
                      help="classification reads `classification_labels` (IEMOCAP-style)")
    data.add_argument("--synthetic-seed", type=int, default=SyntheticConfig.seed,
                      help="seed of the embedded synthetic data set")
    data.add_argument("--synthetic-samples", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                      default=(SyntheticConfig.num_train, SyntheticConfig.num_valid, SyntheticConfig.num_test),
                      help="split sizes of the synthetic data set")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=("casd", "late_fusion"), default="casd",
                       help="late_fusion: the deterministic late-fusion baseline (same encoders, modality "
                       "dropout, no distributions/distillation); the CASD-only flags below are ignored")
    model.add_argument("--hidden", type=int, default=ModelConfig.hidden, help="width H of the encoders")
    model.add_argument("--embed-dim", type=int, default=ModelConfig.embed_dim, help="D of the embeddings")
    model.add_argument("--layers", type=int, default=ModelConfig.encoder_layers,
                       help="Transformer layers per modality encoder")
    model.add_argument("--heads", type=int, default=ModelConfig.heads, help="attention heads (must divide --hidden)")
    model.add_argument("--dropout", type=float, default=ModelConfig.dropout, help="dropout probability")
    model.add_argument("--tau", type=float, default=ModelConfig.tau, help="confidence temperature")
    model.add_argument("--weighting", choices=("confidence", "uniform"), default=ModelConfig.weighting,
                       help="component weights: by confidence, or uniform over the available ones (ablation)")
    model.add_argument("--distribution", choices=("student_t", "gaussian"), default=ModelConfig.distribution,
                       help="component family; gaussian fixes nu at 1e4 (ablation)")
    obj = p.add_argument_group("objective")
    obj.add_argument("--lambda-cd", type=float, default=ObjectiveConfig.lambda_cd,
                     help="weight of the consistency-distillation loss (0 disables it); the default was tuned "
                     "on the synthetic validation split (docs/study.md)")
    obj.add_argument("--samples", type=int, default=ObjectiveConfig.num_samples,
                     help="S reparameterised samples per component")
    obj.add_argument("--fused", action="store_true", help="run sampling and distillation with the Triton kernels")
    obj.add_argument("--noise", choices=("sample", "batch"), default=TrainConfig.noise,
                     help="sample: each sample's noise keyed by (epoch, view, sample index), identical for any "
                     "number of processes; batch: one seed per step and rank (lets --fused draw the noise "
                     "inside the kernel)")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                       help="global batch size (split over the processes under torchrun)")
    train.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak AdamW learning rate (warm-up, then cosine)")
    train.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay, help="AdamW weight decay")
    train.add_argument("--patience", type=int, default=TrainConfig.patience,
                       help="epochs without validation improvement before stopping")
    train.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of every training random stream")
    train.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default=TrainConfig.amp,
                       help="autocast dtype; auto: bf16 on GPUs that support it, fp16 on older ones, off on CPU")
    train.add_argument("--missing-protocol", choices=("frame", "modality", "mixed"),
                       default=TrainConfig.missing_protocol, help="missingness of the student view in training")
    train.add_argument("--missing-rate", type=float, default=TrainConfig.missing_rate,
                       help="max frame-drop rate / modality-drop probability in training")
    train.add_argument("--eval-seed", type=int, default=1111, help="base seed of the evaluation masks")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--threads", type=int,
                       help="CPU threads for torch (default: torch's choice). On a busy CPU use 1: with other "
                       "jobs running, torch's 2 intra-op threads were ~10x slower than 1 for these small models")
    train.add_argument("--out", type=Path, help="output directory (default: runs/<timestamp>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


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


def synthetic_config(args: argparse.Namespace) -> SyntheticConfig:
    n_train, n_valid, n_test = args.synthetic_samples
    return SyntheticConfig(seed=args.synthetic_seed, num_train=n_train, num_valid=n_valid, num_test=n_test)


def load_splits(args: argparse.Namespace) -> tuple[dict[str, Split], str]:
    if args.data is None:
        config = synthetic_config(args)
        raw = generate_synthetic(config)
        return {s: split_from_mmsa(raw[s], args.task) for s in SPLITS}, f"synthetic(seed={config.seed})"
    return load_mmsa(args.data, args.task), str(args.data)


def describe_data(splits: dict[str, Split], args: argparse.Namespace, source: str) -> dict:
    """What the model was trained on; checkpoints carry it so casd.predict can check new data."""
    train = splits["train"]
    labels = train.labels
    meta = {
        "source": source,
        "dataset": args.dataset,
        "task": args.task,
        "feature_dims": list(train.feature_dims),
        "seq_lens": list(train.seq_lens),
        "sizes": {s: splits[s].num_samples for s in SPLITS},
        "missing_protocol": args.missing_protocol,
        "missing_rate": args.missing_rate,
        "synthetic": asdict(synthetic_config(args)) if args.data is None else None,
    }
    if args.task == "classification":
        meta["num_classes"] = int(max(int(splits[s].labels.max()) for s in SPLITS)) + 1
    else:
        meta["label_range"] = [float(labels.min()), float(labels.max())]
    return meta


def save_predictions(path: Path, results: list[ConditionResult], ids: np.ndarray) -> None:
    """Per-sample outputs of every condition, so any metric can be recomputed later."""
    arrays = {"ids": np.asarray(ids).astype(str), "labels": results[0].labels}
    for r in results:
        for key in ("output", "confidence", "weights"):
            arrays[f"{r.condition.name}/{key}"] = getattr(r, key)
    np.savez_compressed(path, **arrays)


def build_model_and_objective(args: argparse.Namespace, meta: dict, backend: str):
    """The model of ``--model`` and its objective, from the flags and the data description."""
    output_dim = meta.get("num_classes", 1)
    objective_config = ObjectiveConfig(num_samples=args.samples, lambda_cd=args.lambda_cd,
                                       task=args.task, backend=backend)
    if args.model == "late_fusion":
        config = LateFusionConfig(feature_dims=tuple(meta["feature_dims"]), output_dim=output_dim,
                                  hidden=args.hidden, encoder_layers=args.layers, heads=args.heads,
                                  dropout=args.dropout)
        return LateFusionModel(config), LateFusionObjective(replace(objective_config, lambda_cd=0.0))
    config = ModelConfig(
        feature_dims=tuple(meta["feature_dims"]), output_dim=output_dim,
        hidden=args.hidden, embed_dim=args.embed_dim, encoder_layers=args.layers, heads=args.heads,
        dropout=args.dropout, tau=args.tau, weighting=args.weighting, distribution=args.distribution,
    )
    return CASDModel(config), CASDObjective(objective_config, config.tau)


def run(args: argparse.Namespace) -> dict:
    """Train, select on validation, evaluate on test; write everything under args.out.

    Under torchrun every rank runs this; rank 0 alone logs and writes files, and every rank
    returns the same report.
    """
    started = time.perf_counter()
    context, device_name = init_distributed(args.device)
    device = resolve_device(device_name)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backend = "triton" if args.fused else "torch"
    if args.fused:
        triton_ops(device)  # fail now, with a clear message, rather than after data loading
    out_dir = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if context.enabled and args.out is None:
        raise ValueError("under torchrun pass --out: each process would pick its own timestamped folder")
    if args.resume and not (out_dir / "last.pt").exists():
        raise FileNotFoundError(f"--resume: no checkpoint {out_dir / 'last.pt'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir, context)
    torch.manual_seed(args.seed)

    splits, source = load_splits(args)
    validate_splits(splits, args.dataset, args.task, source)  # every data problem, before a model is built
    meta = describe_data(splits, args, source)
    model, objective = build_model_and_objective(args, meta, backend)
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, seed=args.seed, amp=args.amp, missing_protocol=args.missing_protocol,
        missing_rate=args.missing_rate, progress=not args.no_progress, noise=args.noise,
    )
    selection = "F1_weighted" if args.task == "classification" else "MAE"
    valid_conditions = [
        c for c in evaluation_conditions(args.eval_seed + VALID_SEED_OFFSET)
        if c.protocol == "modality" or round(c.rate, 1) in VALID_RATES
    ]
    trainer = Trainer(model, objective, splits["train"], splits["valid"], valid_conditions, train_config,
                      args.dataset, args.task, device, out_dir, meta, selection, context)
    snapshot = {"argv": sys.argv, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "model_kind": args.model, "model": model.config.to_dict(), "objective": asdict(objective.config),
                "train": asdict(train_config), "data": meta, "world_size": context.world_size}
    if context.is_main:
        (out_dir / "config.json").write_text(json.dumps(snapshot, indent=2))
    log.info("data %s: %s samples, feature dims %s", source, meta["sizes"], meta["feature_dims"])
    log.info("model %s: %d parameters; backend %s on %s, amp %s, %d process(es); output %s", args.model,
             sum(p.numel() for p in model.parameters()), backend, device, trainer.amp_dtype,
             context.world_size, out_dir)
    if args.resume:
        trainer.resume(out_dir / "last.pt")

    state = trainer.fit()
    best = torch.load(out_dir / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    log.info("best epoch %d (validation %s %.4f); evaluating on test", state.best_epoch, selection, state.best_score)

    names = headline_metrics(args.dataset, args.task)
    results = evaluate_conditions(model, splits["test"], evaluation_conditions(args.eval_seed), args.dataset,
                                  args.task, device, train_config.eval_batch_size, trainer.amp_dtype,
                                  context=context)
    summary = summarise(results)
    report = {
        "config": snapshot,
        "selection": {"metric": selection, "best_epoch": state.best_epoch, "valid_score": state.best_score,
                      "valid_conditions": [asdict(c) for c in valid_conditions]},
        "history": state.history,
        "test": summary,
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
        plot_robustness(summary, names, out_dir / "robustness.png", title=f"{args.model} on {source}")
        (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=float))
        log.info("wrote %s (results.json, results.txt, predictions.npz, robustness.png, best.pt) in %.0fs",
                 out_dir, report["seconds"])
    context.barrier()
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except BackendUnavailableError as exc:
        print(f"casd.train: --fused is not available here: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"casd.train: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
